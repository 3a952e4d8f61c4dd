"""Deterministic augmented copies of a frame: rotation, shift, zoom and horizontal flip.

Copy ``k`` of a frame depends only on (seed, frame key, k), never on the order frames are
processed in, so a resumed extraction writes the same features as an uninterrupted one.
Copy 0 is always the original frame.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class AugmentParams:
    """Ranges as in Keras' ImageDataGenerator, close to the paper's augmentation."""

    rotation: float = 10.0  # degrees, uniform in [-rotation, rotation]
    shift: float = 0.1  # fraction of the image size, per axis
    zoom: float = 0.1  # scale uniform in [1 - zoom, 1 + zoom]
    flip: bool = True  # horizontal flip with probability 0.5


def frame_key(path: str, frame_index: int) -> int:
    """A stable integer naming one frame of one source file (independent of table order)."""
    return zlib.crc32(f"{path}#{frame_index}".encode())


def affine_for(key: int, copy: int, seed: int, size: int, params: AugmentParams) -> tuple[np.ndarray, np.ndarray]:
    """Output->input pixel mapping (matrix, offset) of copy ``copy`` of the frame ``key``."""
    rng = np.random.default_rng([seed, key, copy])
    angle = np.deg2rad(rng.uniform(-params.rotation, params.rotation))
    shift = rng.uniform(-params.shift, params.shift, size=2) * size
    scale = rng.uniform(1 - params.zoom, 1 + params.zoom)
    flip = params.flip and rng.random() < 0.5
    cos, sin = np.cos(angle), np.sin(angle)
    # Rotate and scale about the centre, then shift; flip mirrors the column axis.
    matrix = np.array([[cos, -sin], [sin, cos]]) / scale
    if flip:
        matrix = matrix @ np.diag([1.0, -1.0])
    centre = np.array([(size - 1) / 2, (size - 1) / 2])
    offset = centre - matrix @ (centre + shift)
    return matrix, offset


def augment_frame(rgb: np.ndarray, key: int, copy: int, seed: int, params: AugmentParams) -> np.ndarray:
    """Copy ``copy`` of a square RGB uint8 frame; copy 0 returns the frame itself."""
    if copy == 0:
        return rgb
    size = rgb.shape[0]
    matrix, offset = affine_for(key, copy, seed, size, params)
    # Pillow maps output (x=column, y=row) to input in continuous coordinates, where pixel i
    # spans [i, i+1): shift the index-space offset by half a pixel. Pillow is ~20x faster than
    # scipy.ndimage here. Fill is black: outside an ultrasound sector is black already.
    (m_rr, m_rc), (m_cr, m_cc) = matrix
    half = 0.5 - matrix @ np.array([0.5, 0.5])
    row_offset, col_offset = offset + half
    coefficients = (m_cc, m_cr, col_offset, m_rc, m_rr, row_offset)
    image = Image.fromarray(rgb).transform((size, size), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(image)


def augmented_copies(rgb: np.ndarray, key: int, copies: int, seed: int, params: AugmentParams) -> np.ndarray:
    """Array ``(copies, h, w, 3)``: the original then ``copies - 1`` augmented versions."""
    return np.stack([augment_frame(rgb, key, copy, seed, params) for copy in range(copies)])
