"""Colour maps, overlays and training curves for segmentation results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ...labels import check_label_values


def colorize(labels: np.ndarray, colors: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Class ids `(H, W)` -> colours `(H, W, 3)` uint8 from `colors` `(K, 3)`; ignored pixels are black."""
    labels = np.asarray(labels)
    check_label_values(labels, len(colors), ignore_index, hint=f" (the colour map has {len(colors)} colours)")
    valid = (labels >= 0) & (labels < len(colors))
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    rgb[valid] = colors[labels[valid]]
    return rgb


def overlay(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends the colour map of `labels` over `image` `(H, W, 3)` uint8; ignored pixels keep the image."""
    if image.shape[:2] != np.asarray(labels).shape:
        raise ValueError(f"image {image.shape[:2]} and labels {np.asarray(labels).shape} differ in size")
    painted = colorize(labels, colors).astype(np.float32)
    mask = ((np.asarray(labels) >= 0) & (np.asarray(labels) < len(colors)))[..., None]
    blended = np.where(mask, (1 - alpha) * image.astype(np.float32) + alpha * painted, image.astype(np.float32))
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def prediction_panel(
    image: np.ndarray,
    prediction: np.ndarray,
    colors: np.ndarray,
    ground_truth: np.ndarray | None = None,
    min_height: int = 256,
) -> PIL.Image.Image:
    """Image | ground truth (if given) | prediction overlay, side by side, at least `min_height` pixels high."""
    tiles = [image]
    if ground_truth is not None:
        tiles.append(overlay(image, ground_truth, colors, alpha=0.6))
    tiles.append(overlay(image, prediction, colors, alpha=0.6))
    panel = PIL.Image.fromarray(np.concatenate(tiles, axis=1))
    if panel.height < min_height:  # small images are enlarged pixel for pixel, to stay readable
        factor = -(-min_height // panel.height)
        panel = panel.resize((panel.width * factor, panel.height * factor), PIL.Image.NEAREST)
    return panel


def plot_training_curves(log_history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Writes a PNG with the training loss and, when evaluated, the validation loss, mIoU and boundary mIoU per step."""
    # A standalone Figure with its own canvas: no pyplot, so the caller's (e.g. a notebook's) backend is untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
        return [p[0] for p in points], [p[1] for p in points]

    figure = Figure(figsize=(11, 4))
    FigureCanvasAgg(figure)
    loss_axis, score_axis = figure.subplots(1, 2)
    for key, label in (("loss", "train loss"), ("eval_loss", "validation loss")):
        steps, values = series(key)
        if steps:
            loss_axis.plot(steps, values, marker="o" if key == "eval_loss" else None, label=label)
    loss_axis.set(xlabel="step", ylabel="cross-entropy", title="Loss")
    loss_axis.legend()
    for key, label in (("eval_mean_iou", "mIoU"), ("eval_boundary_mean_iou", "boundary mIoU")):
        steps, values = series(key)
        if steps:
            score_axis.plot(steps, values, marker="o", label=label)
    score_axis.set(xlabel="step", ylabel="score", title="Validation", ylim=(0, 1))
    score_axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path


__all__ = ["colorize", "overlay", "plot_training_curves", "prediction_panel"]
