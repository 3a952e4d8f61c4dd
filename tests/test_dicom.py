"""DICOM files the tests write themselves with pydicom (made-up patient, nothing of a real one), read back as RGB."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM support is an optional extra: pip install 'lusfeat[dicom]'")

from conftest import SECRET_PATIENT, cut_file, dicom_dataset, moving_frames  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import convert_color_space, get_decoder  # noqa: E402
from pydicom.uid import (  # noqa: E402
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from lusfeat import dicom  # noqa: E402
from lusfeat.errors import LusfeatError  # noqa: E402
from lusfeat.frames import count_frames, iter_frames, media_info, probe_media, read_frames  # noqa: E402

FRAMES = np.stack(moving_frames(6, 48, 64))  # (6, 48, 64, 3) RGB
GREY = FRAMES[..., 0]


def _grey_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., np.newaxis], 3, axis=-1)


def _save(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _needs(syntax) -> None:
    if not get_decoder(syntax).is_available:
        pytest.skip(f"no pixel-data plugin for {syntax.name} installed (pip install 'lusfeat[dicom]')")


def _encapsulated(ds, frames: list[bytes], syntax):
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _ffmpeg_codestream(image: np.ndarray, codec: str, pix_fmt: str) -> bytes:
    """One image as a bare codestream of FFmpeg's encoder ``codec`` (JPEG-LS: no Python encoder is installed)."""
    import av

    context = av.CodecContext.create(codec, "w")
    context.width, context.height, context.pix_fmt, context.time_base = image.shape[1], image.shape[0], pix_fmt, Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24" if image.ndim == 3 else "gray").reformat(format=pix_fmt)
    return b"".join(bytes(packet) for packet in [*context.encode(frame), *context.encode(None)])


def test_dicom_is_known_by_content_or_name(tmp_path):
    file = _save(dicom_dataset(FRAMES), tmp_path / "IM0001")  # no suffix, as archives export them
    assert dicom.is_dicom(file) and dicom.is_dicom(tmp_path / "x.DCM")
    (tmp_path / "a.png").write_bytes(b"\x89PNG" + b"\0" * 200)
    assert not dicom.is_dicom(tmp_path / "a.png") and not dicom.is_dicom(tmp_path / "absent")


def test_uncompressed_rgb_cine_loop_frames_count_and_rate(tmp_path):
    file = _save(dicom_dataset(FRAMES, frame_time_ms=33.3), tmp_path / "loop.dcm")
    info = media_info(file)
    assert (info.kind, info.announced, info.frames, info.width, info.height) == ("dicom", 6, 6, 64, 48)
    assert info.rate == pytest.approx(30.03, abs=0.01) and not info.short
    assert np.array_equal(read_frames(file), FRAMES)
    some = dict(iter_frames(file, [1, 4], size=32))
    assert sorted(some) == [1, 4] and some[4].shape == (32, 32, 3)


def test_rate_from_cine_rate_or_frame_time_vector(tmp_path):
    ds = dicom_dataset(FRAMES, frame_time_ms=None)
    ds.CineRate = 18
    assert media_info(_save(ds, tmp_path / "a.dcm")).rate == 18
    del ds.CineRate
    ds.FrameTimeVector = [0, 50, 50, 50, 50, 50]
    assert media_info(_save(ds, tmp_path / "b.dcm")).rate == pytest.approx(20)


def test_single_frame_image(tmp_path):
    file = _save(dicom_dataset(FRAMES[:1], frame_time_ms=None), tmp_path / "still.dcm")
    assert "NumberOfFrames" not in pydicom.dcmread(file)
    assert count_frames(file) == 1 and np.array_equal(read_frames(file)[0], FRAMES[0])


@pytest.mark.parametrize("colour", ["YBR_FULL", "YBR_FULL_422"])
def test_ybr_colour_spaces_become_rgb(tmp_path, colour):
    smooth = np.stack([np.full((48, 64, 3), (200, 40, 90), np.uint8), np.full((48, 64, 3), (30, 160, 220), np.uint8)])
    ybr = convert_color_space(smooth, "RGB", "YBR_FULL")
    ds = dicom_dataset(ybr, colour)
    if colour == "YBR_FULL_422":  # stored as Y1 Y2 Cb Cr per pair of pixels
        pairs = ybr.reshape(2, 48, 32, 2, 3)
        packed = np.concatenate([pairs[..., 0], pairs[..., 0, 1:]], axis=-1)
        packed[..., 1] = pairs[..., 1, 0]
        ds.PixelData = packed.astype(np.uint8).tobytes()
    assert np.abs(read_frames(_save(ds, tmp_path / "ybr.dcm")).astype(int) - smooth).max() <= 2


def test_monochrome2_and_inverted_monochrome1(tmp_path):
    assert np.array_equal(read_frames(_save(dicom_dataset(GREY, "MONOCHROME2"), tmp_path / "m2.dcm")), _grey_rgb(GREY))
    assert np.array_equal(read_frames(_save(dicom_dataset(255 - GREY, "MONOCHROME1"), tmp_path / "m1.dcm")), _grey_rgb(GREY))


def test_twelve_bit_grey_through_its_window(tmp_path):
    values = np.linspace(0, 4095, 48 * 64).reshape(1, 48, 64).astype(np.uint16)
    ds = dicom_dataset(values, "MONOCHROME2", bits=12)
    assert np.abs(read_frames(_save(ds, tmp_path / "whole.dcm"))[0, ..., 0].astype(int) - values[0] / 4095 * 255).max() <= 1
    ds.WindowCenter, ds.WindowWidth = 1024, 512  # 768..1280 spread over 0..255
    grey = read_frames(_save(ds, tmp_path / "window.dcm"))[0, ..., 0]
    assert grey[values[0] < 700].max() == 0 and grey[values[0] > 1300].min() == 255
    assert 100 < grey[np.abs(values[0].astype(int) - 1024) < 10].mean() < 155


def test_palette_colour_through_its_lookup_tables(tmp_path):
    indices = (GREY // 64).astype(np.uint8)  # 0..3
    ds = dicom_dataset(indices, "PALETTE COLOR")
    table = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint16) * 257  # 16-bit entries
    for channel, name in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(ds, f"{name}PaletteColorLookupTableData", table[:, channel].tobytes())
    rgb = read_frames(_save(ds, tmp_path / "palette.dcm"))
    assert np.array_equal(rgb, (table[indices] // 257).astype(np.uint8))


def test_rle_compressed_is_lossless(tmp_path):
    _needs(RLELossless)
    ds = dicom_dataset(FRAMES)
    ds.compress(RLELossless, FRAMES)
    file = _save(ds, tmp_path / "rle.dcm")
    assert media_info(file).format == "DICOM RLE Lossless" and np.array_equal(read_frames(file), FRAMES)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEG2000])
def test_jpeg_2000(tmp_path, syntax):
    _needs(syntax)
    ds = dicom_dataset(FRAMES)
    kwargs = {} if syntax == JPEG2000Lossless else {"j2k_psnr": [60]}
    ds.compress(syntax, FRAMES, **kwargs)
    error = np.abs(read_frames(_save(ds, tmp_path / "j2k.dcm")).astype(int) - FRAMES)
    assert error.max() == 0 if syntax == JPEG2000Lossless else error.mean() < 1


def test_jpeg_baseline_ybr_full_422_from_pillow(tmp_path):
    _needs(JPEGBaseline8Bit)
    from PIL import Image

    def jpeg(rgb: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=95, subsampling=1)  # 4:2:2
        return buffer.getvalue()

    colours = np.array([(200, 40, 90), (30, 160, 220), (240, 220, 20), (20, 20, 20)], np.uint8)
    blocks = np.stack([np.repeat(np.repeat(np.roll(colours, shift, 0).reshape(2, 2, 3), 24, 0), 32, 1)
                       for shift in range(3)])  # 3 frames of four solid 24 x 32 blocks
    ds = _encapsulated(dicom_dataset(blocks, "YBR_FULL_422"), [jpeg(rgb) for rgb in blocks], JPEGBaseline8Bit)
    rgb = read_frames(_save(ds, tmp_path / "jpeg.dcm")).astype(int)
    assert rgb.shape == blocks.shape
    inner = (slice(None), slice(4, 20), slice(4, 28))  # away from the block edges, where JPEG blurs the colour
    for row in (0, 24):
        for column in (0, 32):
            got = rgb[:, row:row + 24, column:column + 32][inner].mean(axis=(1, 2))
            want = blocks[:, row:row + 24, column:column + 32][inner].mean(axis=(1, 2))
            assert np.abs(got - want).max() < 4, (row, column)


@pytest.mark.parametrize(("colour", "pix_fmt"), [("RGB", "rgb24"), ("MONOCHROME2", "gray")])
def test_jpeg_ls_from_ffmpegs_encoder(tmp_path, colour, pix_fmt):
    _needs(JPEGLSLossless)
    images = FRAMES if colour == "RGB" else GREY
    streams = [_ffmpeg_codestream(image, "jpegls", pix_fmt) for image in images]
    ds = _encapsulated(dicom_dataset(images, colour), streams, JPEGLSLossless)
    expected = FRAMES if colour == "RGB" else _grey_rgb(GREY)
    assert np.array_equal(read_frames(_save(ds, tmp_path / "jls.dcm")), expected)


def test_a_cut_file_gives_the_frames_before_the_cut(tmp_path):
    whole = _save(dicom_dataset(FRAMES), tmp_path / "whole.dcm")
    cut = cut_file(whole, tmp_path / "cut.dcm", 0.8)
    info = media_info(cut)
    assert (info.announced, info.frames) == (6, 4) and info.short
    assert np.array_equal(read_frames(cut), FRAMES[:4])
    ds = dicom_dataset(FRAMES)
    ds.compress(RLELossless, FRAMES)
    encapsulated = cut_file(_save(ds, tmp_path / "rle.dcm"), tmp_path / "rle_cut.dcm", 0.7)
    assert "pixel data are cut short" in probe_media(encapsulated)


def test_objects_without_images_are_refused_by_name(tmp_path):
    report = dicom_dataset(FRAMES[:1], sop_class="1.2.840.10008.5.1.4.1.1.88.33")  # Comprehensive SR
    del report.PixelData
    report.Modality = "SR"
    reason = probe_media(_save(report, tmp_path / "report.dcm"))
    assert "no pixel data (SOP class Comprehensive SR Storage, a structured report)" in reason
    with pytest.raises(LusfeatError, match="report.dcm: no pixel data"):
        media_info(tmp_path / "report.dcm")


def test_unsupported_transfer_syntax_is_named(tmp_path):
    # H.264 inside DICOM: pydicom has no decoder for it (lusfeat reads the same loop exported as a video file)
    ds = _encapsulated(dicom_dataset(FRAMES[:1]), [b"\0" * 64], "1.2.840.10008.1.2.4.102")
    reason = probe_media(_save(ds, tmp_path / "h264.dcm"))
    assert "unsupported transfer syntax MPEG-4 AVC/H.264 High Profile / Level 4.1 (1.2.840.10008.1.2.4.102)" in reason
    assert "decompress" in reason


def test_a_dcm_name_on_something_else_is_refused(tmp_path):
    (tmp_path / "fake.dcm").write_bytes(b"this is not dicom at all" * 20)
    assert "not a DICOM file" in probe_media(tmp_path / "fake.dcm")


def test_no_patient_identifier_in_messages(tmp_path):
    report = dicom_dataset(FRAMES[:1])
    del report.PixelData
    _save(report, tmp_path / "r.dcm")
    reasons = probe_media(tmp_path / "r.dcm") + repr(media_info(_save(dicom_dataset(FRAMES), tmp_path / "ok.dcm")))
    for value in SECRET_PATIENT.values():
        assert value not in reasons and value.split("^")[0] not in reasons
