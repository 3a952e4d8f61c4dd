"""DICOM images and cine loops: single- and multi-frame, uncompressed or compressed, as RGB uint8 frames.

Optional: ``pip install "lusfeat[dicom]"`` brings pydicom and the pylibjpeg plugins (pydicom's
own maintainers keep both; wheels for every platform): pylibjpeg-libjpeg decodes JPEG baseline,
extended and lossless and JPEG-LS, pylibjpeg-openjpeg JPEG 2000, pylibjpeg-rle RLE (pydicom
decodes RLE and uncompressed data itself too). Pillow, a lusfeat dependency, is pydicom's
fallback for JPEG baseline and JPEG 2000.

- A file is DICOM by its content (the ``DICM`` marker after the 128-byte preamble) or by a
  ``.dcm``/``.dicom`` name; :func:`is_dicom` needs no pydicom.
- Frames: the data set's Number of Frames (1 when absent) is what it announces; frame ``k`` is
  the ``k``-th frame of its pixel data, and frames after the first that fails to decode (a cut
  file) are not used, as for a video that ends early. Rate: Frame Time, Frame Time Vector, Cine
  Rate or Recommended Display Frame Rate, the first present.
- Colour: RGB as is; YBR_FULL, YBR_FULL_422 (and the YBR_ICT/RCT of JPEG 2000) converted to RGB by
  pydicom; PALETTE COLOR through its lookup tables; MONOCHROME2 as grey and MONOCHROME1
  inverted, more than 8 bits through the data set's window (else its whole stored range) to 8.
- Refused, naming the file and what to do: no pixel data (a structured report, a presentation
  state, an encapsulated PDF, ...), a transfer syntax no installed plugin decodes (named), a
  colour space or sample layout that is not an image's.

Only pixel attributes are read from the data set: nothing of the patient (name, id, dates)
reaches lusfeat's outputs, messages or logs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lusfeat.errors import LusfeatError

DICOM_SUFFIXES = (".dcm", ".dicom")
PREAMBLE = 128
INSTALL = 'pip install "lusfeat[dicom]"'
WHAT_TO_DO = "replace or remove the file"
COLOUR_SPACES = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "YBR_ICT", "YBR_RCT")
SUPPORTED_TEXT = ("uncompressed (implicit/explicit VR, deflated), JPEG baseline, extended and lossless, JPEG-LS, "
                  "JPEG 2000, HTJ2K and RLE")
DECOMPRESS = ("decompress it first (dcmtk: dcmdjpeg or dcmconv +te; gdcm: gdcmconv --raw) or export the loop as a "
              "video file")


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether ``path`` is DICOM: ``DICM`` at byte 128, or a ``.dcm``/``.dicom`` name (for files without a preamble)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(PREAMBLE + 4)
    except OSError:
        return False
    return head[PREAMBLE:] == b"DICM"


def _pydicom(path: str | os.PathLike):
    try:
        import pydicom
    except ImportError:
        raise LusfeatError(f"{path}: a DICOM file, and DICOM support is not installed: {INSTALL}") from None
    return pydicom


def read_header(path: str | os.PathLike):
    """The data set of ``path`` with its pixel data left on disk (read when a frame is decoded)."""
    pydicom = _pydicom(path)
    with open(path, "rb") as handle:
        marked = handle.read(PREAMBLE + 4)[PREAMBLE:] == b"DICM"
    try:
        with warnings.catch_warnings():  # pydicom warns of oddities it reads past; the checks below decide
            warnings.simplefilter("ignore")
            # force: a .dcm file without preamble is DICOM all the same (checked below)
            ds = pydicom.dcmread(str(path), defer_size="32 KB", force=not marked)
    except Exception as error:  # pydicom raises assorted types for a damaged file  # noqa: BLE001
        raise LusfeatError(f"{path}: not a readable DICOM file ({type(error).__name__}: {error}); "
                           f"{WHAT_TO_DO}") from error
    if not marked and "SOPClassUID" not in ds and "PixelData" not in ds:
        raise LusfeatError(f"{path}: named as DICOM but not a DICOM file (no DICM marker, no DICOM data set); "
                           f"{WHAT_TO_DO}")
    return ds


def transfer_syntax(ds):
    from pydicom.uid import UID, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(value) if value else ImplicitVRLittleEndian


def _sop_class(ds) -> str:
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    value = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    return UID(value).name if value else "none given"


def _pixel_data_cut(path: str | os.PathLike) -> bool:
    """Whether the file holds a Pixel Data element that pydicom dropped: the file ends inside it."""
    data = Path(path).read_bytes()
    return b"\xe0\x7f\x10\x00" in data[PREAMBLE:]


def problem(ds, path: str | os.PathLike | None = None) -> str:
    """Why lusfeat cannot take frames from the data set ``ds`` (read from ``path``); empty when it can."""
    from pydicom.pixels import get_decoder

    if "PixelData" not in ds:
        what = _sop_class(ds)
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            return f"floating-point pixel data (a parametric map, SOP class {what}), not an image; export the images instead"
        if path is not None and _pixel_data_cut(path):
            return "its pixel data are cut short (the file ends inside them); copy the file again from its source"
        kind = ", a structured report" if "SR" in what.split() or ds.get("Modality") == "SR" else ""
        return (f"no pixel data (SOP class {what}{kind}): not an image or cine loop; pass the study's ultrasound "
                "images or multi-frame cine loops instead")
    syntax = transfer_syntax(ds)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"unsupported transfer syntax {syntax.name} ({syntax}): lusfeat reads {SUPPORTED_TEXT}; {DECOMPRESS}"
    if not decoder.is_available:
        return (f"its transfer syntax {syntax.name} ({syntax}) needs a pixel-data plugin that is not installed: "
                f"{INSTALL}")
    colour = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if colour not in COLOUR_SPACES:
        return f"photometric interpretation {colour or '(none)'!r} is not one lusfeat converts ({', '.join(COLOUR_SPACES)})"
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples not in (1, 3) or (samples == 3) != (colour not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")):
        return f"{samples} samples per pixel in {colour}: not an image layout lusfeat reads"
    if not ds.get("Rows") or not ds.get("Columns"):
        return "no image size (Rows/Columns)"
    return ""


def _checked(path: str | os.PathLike):
    ds = read_header(path)
    reason = problem(ds, path)
    if reason:
        raise LusfeatError(f"{path}: {reason}")
    return ds


def announced_frames(ds) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def frame_rate(ds) -> float | None:
    """Frames per second by the data set: Frame Time (ms), Frame Time Vector, Cine Rate, Recommended Display Frame Rate."""
    try:
        if ds.get("FrameTime"):
            return 1000.0 / float(ds.FrameTime)
        vector = ds.get("FrameTimeVector")
        if vector and len(vector) > 1:  # its first entry is 0, the others the time since the previous frame
            steps = [float(value) for value in list(vector)[1:] if float(value) > 0]
            if steps:
                return 1000.0 / float(np.mean(steps))
        for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
            if ds.get(keyword):
                return float(ds.get(keyword))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return None


def _scale(values: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Values of a ``bits``-bit range (signed or not) to uint8 0-255."""
    if bits == 8 and not signed and values.dtype == np.uint8:
        return values
    low = -(2 ** (bits - 1)) if signed else 0
    high = low + 2 ** bits - 1
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(array: np.ndarray, ds) -> np.ndarray:
    """One decoded frame (pydicom's ``as_rgb`` output) as RGB uint8 ``(rows, columns, 3)``."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    colour = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if colour == "PALETTE COLOR":
        rgb = apply_color_lut(array, ds)
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return _scale(rgb, 16 if depth > 8 else 8, False)
    if array.ndim == 3:  # RGB, or YBR already converted to RGB by pydicom
        return _scale(array, bits, signed)
    grey = array
    if (bits > 8 or signed) and ("WindowCenter" in ds or "VOILUTSequence" in ds):
        grey = apply_voi_lut(apply_modality_lut(grey, ds), ds)
        if "VOILUTSequence" in ds and "WindowCenter" not in ds:
            bits, signed = int(ds.VOILUTSequence[0].LUTDescriptor[2]), False
    grey = _scale(grey, bits, signed)
    if colour == "MONOCHROME1":
        grey = 255 - grey
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)


def _decoded(path: str | os.PathLike, ds, indices: list[int] | None) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame number, rgb)`` from the first frame (or the ``indices`` asked), until one fails to decode."""
    from pydicom.pixels import iter_pixels

    numbers = range(announced_frames(ds)) if indices is None else [i for i in indices if i < announced_frames(ds)]
    numbers = list(numbers)
    if not numbers:
        return
    if _native_422(ds):
        # pydicom 3.0 decodes only the first of several native YBR_FULL_422 frames in one pass: one pass per frame.
        arrays = (next(iter_pixels(str(path), indices=[number], as_rgb=True)) for number in numbers)
    else:
        arrays = iter_pixels(str(path), indices=numbers, as_rgb=True)
    try:
        for number, array in zip(numbers, arrays, strict=False):
            yield number, to_rgb(array, ds)
    except Exception:  # noqa: BLE001 - a damaged or cut data set: the frames before it are the ones that decode
        return


def _native_422(ds) -> bool:
    return (not transfer_syntax(ds).is_compressed
            and str(ds.get("PhotometricInterpretation", "")).strip().upper() == "YBR_FULL_422")


def probe(path: str | os.PathLike) -> str:
    """Empty string if the DICOM file's first frame decodes, else the reason it does not."""
    try:
        ds = _checked(path)
    except LusfeatError as error:
        return str(error).split(": ", 1)[-1].removesuffix(f"; {WHAT_TO_DO}")
    for _ in _decoded(path, ds, [0]):
        return ""
    return f"zero frames: its {transfer_syntax(ds).name} pixel data do not decode"


def info(path: str | os.PathLike) -> dict[str, Any]:
    """The :class:`lusfeat.frames.MediaInfo` fields of a DICOM file, its frames counted by decoding them."""
    ds = _checked(path)
    decoded = sum(1 for _ in _decoded(path, ds, None))
    if not decoded:
        raise LusfeatError(f"{path}: zero frames, its {transfer_syntax(ds).name} pixel data do not decode; {WHAT_TO_DO}")
    announced = announced_frames(ds)
    kind = "dicom"
    return {"kind": kind, "format": f"DICOM {transfer_syntax(ds).name}", "announced": max(announced, decoded),
            "frames": decoded, "width": int(ds.Columns), "height": int(ds.Rows), "rate": frame_rate(ds)}


def iter_frames(path: str | os.PathLike, wanted: list[int] | None) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame number, rgb)`` of the wanted frames (all when None), full size (:mod:`lusfeat.frames` resizes them
    as it resizes video frames)."""
    ds = _checked(path)
    yield from _decoded(path, ds, wanted)
