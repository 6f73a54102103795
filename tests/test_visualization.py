"""Colour maps, overlays and panels."""

from __future__ import annotations

import numpy as np
import pytest

from fapn_hf.labels import CITYSCAPES_LABELS, CITYSCAPES_PALETTE, palette
from fapn_hf.tasks.semantic.visualization import colorize, overlay, plot_training_curves, prediction_panel


def test_palettes_are_distinct_and_cityscapes_uses_its_own_colours():
    colors = palette(150)
    assert colors.shape == (150, 3) and colors.dtype == np.uint8 and len(np.unique(colors, axis=0)) == 150
    assert np.array_equal(palette(19, CITYSCAPES_LABELS), np.array(CITYSCAPES_PALETTE, dtype=np.uint8))


def test_colorize_and_overlay_keep_ignored_pixels():
    colors = np.array([[255, 0, 0], [0, 255, 0]], dtype=np.uint8)
    labels = np.array([[0, 1], [255, 1]])
    assert colorize(labels, colors).tolist() == [[[255, 0, 0], [0, 255, 0]], [[0, 0, 0], [0, 255, 0]]]
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    blended = overlay(image, labels, colors, alpha=0.5)
    assert blended[1, 0].tolist() == [100, 100, 100]  # ignored: untouched
    assert blended[0, 0].tolist() == [178, 50, 50]  # (100 + 255) / 2 rounded, (100 + 0) / 2
    with pytest.raises(ValueError, match="outside"):
        colorize(np.array([[7]]), colors)
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, np.zeros((3, 2), dtype=np.int64), colors)


def test_panel_and_curves(tmp_path):
    colors = palette(3)
    image = np.zeros((64, 80, 3), dtype=np.uint8)
    labels = np.zeros((64, 80), dtype=np.int64)
    panel = prediction_panel(image, labels, colors, ground_truth=labels)
    assert panel.size == (3 * 80 * 4, 64 * 4)  # three tiles, enlarged 4x to reach 256 px
    history = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"step": 2, "eval_loss": 0.6, "eval_mean_iou": 0.4}]
    path = plot_training_curves(history, tmp_path / "curves.png")
    assert path.stat().st_size > 1000
