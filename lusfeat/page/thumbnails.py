"""Per video, the frames that weigh most in its score, and their Grad-CAM overlays as page thumbnails.

The maps are ``lusfeat.heatmaps``' (Grad-CAM of the scorer's target through the backbone), computed
once from what scoring already has. The target depends on a frame's last convolutional maps ``A``
(h, w, c) only through their spatial mean, the pooled feature ``f`` the model scores, so
``d target / d A = g / (h w)`` with ``g = d target / d f``, and Grad-CAM's map is
``sum_c g_c A_c / (h w)``: the gradient comes from the pooled features of the whole video (no
backbone pass), and only the frames shown go through the backbone again, for their maps.

A frame *weighs* what its features push its video's score: ``g . f`` (gradient x input, the mean of
its signed Grad-CAM map times ``h w``). The frames shown are those that push the score up most.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd

from lusfeat.heatmaps import FrameMap, conv_maps, target_function, video_images
from lusfeat.page.content import HeatMap

THUMB = 224  # pixels per half (frame | overlay) of a thumbnail; shown at about 150 CSS px, sharp on a phone
OPACITY = 0.45  # of the jet colour map over the frame, as lusfeat.explain draws it


def feature_gradients(model, features: np.ndarray) -> np.ndarray:
    """``(n, dim)`` gradient of the scorer's target (one video's frames together) by each frame's pooled features."""
    import tensorflow as tf

    target, _ = target_function(model)
    pooled = tf.convert_to_tensor(np.asarray(features, dtype=np.float32))
    with tf.GradientTape() as tape:
        tape.watch(pooled)
        value = target(pooled)
    return tape.gradient(value, pooled).numpy()


def frame_weights(gradients: np.ndarray, features: np.ndarray) -> np.ndarray:
    """``(n,)``: what each frame's features push the target, gradient x input."""
    return np.einsum("nd,nd->n", gradients, np.asarray(features, dtype=np.float32))


def heaviest(weights: np.ndarray, count: int) -> list[int]:
    """Positions of the ``count`` frames that push the score up most (earlier frame first on ties)."""
    return [int(i) for i in np.argsort(-weights, kind="stable")[:max(0, count)]]


def frame_maps(extractor, images: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """``(k, h, w)`` signed Grad-CAM maps of ``images`` given their pooled-feature gradients ``(k, dim)``."""
    maps = conv_maps(extractor, images)
    return np.einsum("khwc,kc->khw", maps, gradients) / (maps.shape[1] * maps.shape[2])


def overlay_uri(frame_map: FrameMap, size: int = THUMB, quality: int = 82) -> str:
    """The frame beside the frame under its map (jet, ``OPACITY``), side by side, as a JPEG ``data:`` URI."""
    from matplotlib import colormaps
    from PIL import Image

    image = frame_map.image.astype(np.float32)
    colours = colormaps["jet"](frame_map.shown())[..., :3] * 255.0
    blended = (1.0 - OPACITY) * image + OPACITY * colours
    halves = [Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
              for a in (image, blended)]
    both = Image.new("RGB", (2 * size + 4, size), (255, 255, 255))
    both.paste(halves[0], (0, 0))
    both.paste(halves[1], (size + 4, 0))
    buffer = io.BytesIO()
    both.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def video_heatmaps(extractor, model, frames: pd.DataFrame, features: np.ndarray, size: int,
                   count: int) -> tuple[list[HeatMap], list[FrameMap]]:
    """The ``count`` heaviest frames of one video, as thumbnails and as maps.

    ``model``: the scorer (a fitted model of ``lusfeat.models``, its Grad-CAM target the map's);
    ``frames``: the video's frames as the model scored them (``path, file, frame_index``, in order),
    ``features``: their pooled features ``(n, dim)`` (those the scores came from); ``size``: the
    backbone's input size. One backbone pass of the ``count`` frames shown.
    """
    if count < 1 or len(frames) == 0:
        return [], []
    gradients = feature_gradients(model, features)
    weights = frame_weights(gradients, features)
    chosen = heaviest(weights, count)
    rows = frames.iloc[sorted(chosen)].reset_index(drop=True)  # decoded in file order
    images = video_images(rows, size)
    order = sorted(chosen)
    cams = frame_maps(extractor, images, gradients[order])
    upward = float(np.maximum(weights, 0).sum())
    maps, thumbs = [], []
    for position in chosen:
        k = order.index(position)
        frame_map = FrameMap(int(rows["frame_index"].iloc[k]), images[k], cams[k])
        maps.append(frame_map)
        share = float(max(weights[position], 0.0) / upward) if upward > 0 else 0.0
        thumbs.append(HeatMap(frame_map.frame_index, share, overlay_uri(frame_map), bool(weights[position] > 0)))
    return thumbs, maps
