"""Heat maps: where in a frame a model's score comes from, by Grad-CAM through the backbone and the model.

Grad-CAM (Selvaraju et al., ICCV 2017): for a frame's last convolutional maps ``A`` (h, w, c) of
the backbone and a target ``y``, the channel weights are ``alpha_c = mean_hw dy/dA_c`` and the map
is ``ReLU(sum_c alpha_c A_c)``, upsampled to the frame. lusfeat's pooled feature of a frame *is*
the mean of ``A`` over h, w, so the gradient flows through exactly what the model was trained on.
The target, differentiated by TensorFlow through the model as ``lusfeat.predict`` uses it:

- ``video`` (the default primary model): the video's **latent severity** ``w . z`` of the ordinal
  model (``P(score <= k) = sigmoid(theta_k - w . z)``: larger means a higher score), where ``z`` is
  the standardised mean, std and max over the frames the model pools (every ``frame_step``-th
  frame of the video). A frame's map thus includes how it moves its video's mean, spread and
  maxima; frames that hold no maximum and sit at the mean contribute little.
- ``head`` / ``logreg``: the frame's logit (before softmax) of its own predicted score.

The map shows where the features push the target **up** (a higher severity for the video model);
what pushes it down is cut by the ReLU, as in Grad-CAM. A check that the maps depend on what the
network learned (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018):
``tests/test_heatmaps.py`` compares maps of the trained backbone with maps of a randomly
initialised one by Spearman rank correlation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lusfeat.errors import LusfeatError
from lusfeat.files import make_folder, replace_atomically

MAP_BATCH = 8  # frames through the backbone at a time


@dataclass
class FrameMap:
    """One frame's heat map: ``cam`` (h, w) Grad-CAM before the ReLU, at the backbone's map resolution."""

    frame_index: int
    image: np.ndarray  # (size, size, 3) uint8, the frame as the backbone saw it
    cam: np.ndarray  # (h, w) float, signed

    def shown(self) -> np.ndarray:
        """The map as drawn: ReLU, upsampled bilinearly to the frame, scaled to [0, 1] (all 0 if nothing is positive)."""
        import tensorflow as tf

        positive = np.maximum(self.cam, 0.0)
        size = self.image.shape[:2]
        up = tf.image.resize(positive[..., np.newaxis].astype(np.float32), size, method="bilinear").numpy()[..., 0]
        peak = up.max()
        return up / peak if peak > 0 else up


def target_function(model) -> tuple[Callable, str]:
    """``(f, what)``: ``f`` maps one video's frame features ``(n, dim)`` (a TF tensor) to the scalar to explain,
    the estimator's own Grad-CAM target (its ``gradcam_target``; :data:`lusfeat.models.registry.MODELS` says which)."""
    # a calibrated model (lusfeat.models.calibrated) explains its estimator's score
    estimator = model if hasattr(model, "gradcam_target") else getattr(model, "estimator_", model)
    if not hasattr(estimator, "gradcam_target"):
        raise LusfeatError(f"no heat maps for a {type(estimator).__name__}: it has no Grad-CAM target")
    try:
        return estimator.gradcam_target()
    except ValueError as error:
        raise LusfeatError(f"{error}: use another --scorer") from error


def conv_maps(extractor, images: np.ndarray) -> np.ndarray:
    """``(n, h, w, c)`` float32 last convolutional maps of ``images`` ``(n, size, size, 3)`` uint8."""
    out = [np.asarray(extractor(images[start:start + MAP_BATCH], training=False), dtype=np.float32)
           for start in range(0, len(images), MAP_BATCH)]
    return np.concatenate(out)


def grad_cam(maps: np.ndarray, target: Callable) -> tuple[np.ndarray, float]:
    """``(cams (n, h, w) signed, target value)``: Grad-CAM of every frame for one target over the frames' pooled features."""
    import tensorflow as tf

    A = tf.convert_to_tensor(maps)
    with tf.GradientTape() as tape:
        tape.watch(A)
        value = target(tf.reduce_mean(A, axis=[1, 2]))
    gradients = tape.gradient(value, A)
    alpha = tf.reduce_mean(gradients, axis=[1, 2])
    return tf.einsum("nhwc,nc->nhw", A, alpha).numpy(), float(value)


def video_images(frames: pd.DataFrame, size: int) -> np.ndarray:
    """``(n, size, size, 3)`` uint8: the frames of ``frames`` (a :func:`lusfeat.embed.plan_frames` table) as the backbone sees them."""
    from lusfeat.augment import AugmentParams
    from lusfeat.embed import iter_images

    images = iter_images(frames, size, 1, 0, AugmentParams(0.0, 0.0, 0.0, False))
    return np.stack([next(images)[0] for _ in range(len(frames))])


def explain_video(extractor, model, frames: pd.DataFrame, size: int,
                  chosen: list[int] | None = None) -> tuple[list[FrameMap], np.ndarray, float]:
    """Heat maps of one video's ``chosen`` frame indices (default: all of ``frames``).

    ``frames`` are the frames the model pools for this video (every frame_step-th); returns
    ``(maps, pooled features (n, dim) of all its frames, target value)``.
    """
    images = video_images(frames, size)
    maps = conv_maps(extractor, images)
    target, _ = target_function(model)
    cams, value = grad_cam(maps, target)
    indices = frames["frame_index"].astype(int).tolist()
    wanted = indices if chosen is None else chosen
    out = [FrameMap(index, images[indices.index(index)], cams[indices.index(index)]) for index in wanted]
    return out, maps.mean(axis=(1, 2)), value


def spearman_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' values (flattened): Adebayo et al.'s similarity of saliency maps."""
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if np.all(a == a[0]) or np.all(b == b[0]):
        return 0.0
    return float(spearmanr(a, b).statistic)


def write_overlay(frame_map: FrameMap, path: Path, title: str) -> Path:
    """The frame with its heat map over it (jet, half transparent), beside the frame alone; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(7.2, 3.9), dpi=100)
    axes[0].imshow(frame_map.image)
    axes[0].set_title("frame", fontsize=9)
    axes[1].imshow(frame_map.image)
    shown = axes[1].imshow(frame_map.shown(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[1].set_title("Grad-CAM (red: pushes the score up)", fontsize=9)
    for axis in axes:
        axis.set_axis_off()
    figure.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.02)
    figure.suptitle(title, fontsize=9)
    try:
        make_folder(path.parent)
        replace_atomically(path, lambda target: figure.savefig(target, bbox_inches="tight"))
    finally:
        plt.close(figure)
    return path
