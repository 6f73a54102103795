"""PointRend subdivision inference against an independent NumPy computation of detectron2's semantics (SPEC 2.6).

The reference below shares no code with the package: it upsamples, ranks cells, places points, samples maps with
zero padding and runs the point head with explicit float64 loops and matrix products.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from fapn_hf import FaPNForSemanticSegmentation


def upsample2x_bilinear(maps: np.ndarray) -> np.ndarray:
    """`(C, H, W)` -> `(C, 2H, 2W)`, bilinear with align_corners=False (source index clamped at 0, as PyTorch)."""

    def axis_weights(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.maximum((np.arange(2 * size) + 0.5) / 2 - 0.5, 0.0)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, size - 1)
        return low, high, source - low

    _, height, width = maps.shape
    y0, y1, wy = axis_weights(height)
    x0, x1, wx = axis_weights(width)
    rows = maps[:, y0, :] * (1 - wy)[None, :, None] + maps[:, y1, :] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :] + rows[:, :, x1] * wx[None, None, :]


def sample_with_zero_padding(maps: np.ndarray, x: float, y: float) -> np.ndarray:
    """`maps` `(C, H, W)` at the point (x, y) in [0, 1] coordinates; taps outside the map read 0 (grid_sample).

    detectron2's `point_sample` forms the grid `2 * point - 1` in float32 whatever the maps' dtype; so does this.
    """
    _, height, width = maps.shape
    grid_x, grid_y = (float(np.float32(2.0) * np.float32(v) - np.float32(1.0)) for v in (x, y))
    px, py = ((grid_x + 1) * width - 1) / 2, ((grid_y + 1) * height - 1) / 2
    left, top = int(np.floor(px)), int(np.floor(py))
    fx, fy = px - left, py - top
    value = np.zeros(maps.shape[0])
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            row, col = top + dy, left + dx
            if 0 <= row < height and 0 <= col < width:
                value += wy * wx * maps[:, row, col]
    return value


def reference_subdivision(coarse, fine, point_head, steps: int, num_points: int) -> np.ndarray:
    """detectron2's `PointRendSemSegHead` inference on one image: `coarse` `(K, h, w)`, `fine` `(D, h, w)`."""

    def numpy(conv: torch.nn.Conv1d) -> tuple[np.ndarray, np.ndarray]:
        return conv.weight[:, :, 0].detach().double().numpy(), conv.bias.detach().double().numpy()

    weights = [numpy(layer) for layer in point_head.layers]
    predictor = numpy(point_head.predictor)
    logits = coarse
    for _ in range(steps):
        logits = upsample2x_bilinear(logits)
        _, height, width = logits.shape
        ordered = np.sort(logits, axis=0)
        uncertainty = (ordered[-2] - ordered[-1]).reshape(-1)  # second best minus best
        chosen = np.argsort(-uncertainty, kind="stable")[: min(num_points, height * width)]
        refined = logits.reshape(logits.shape[0], -1).copy()
        for index in chosen:
            # Cell centres with detectron2's formula, in float32 as there.
            step_x, step_y = np.float32(1.0 / width), np.float32(1.0 / height)
            x = float(np.float32(step_x / np.float32(2.0)) + np.float32(index % width) * step_x)
            y = float(np.float32(step_y / np.float32(2.0)) + np.float32(index // width) * step_y)
            hidden = np.concatenate([sample_with_zero_padding(fine, x, y), sample_with_zero_padding(coarse, x, y)])
            for weight, bias in weights:
                hidden = np.maximum(weight @ hidden + bias, 0.0)
            refined[:, index] = predictor[0] @ hidden + predictor[1]
        logits = refined.reshape(logits.shape)
    return logits


def _randomise(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.3)


@pytest.mark.parametrize(
    "size, num_points",
    [((36, 44), 40), ((64, 64), 10_000)],
    ids=["odd-stride-4-map-9x11", "fewer-cells-than-points"],
)
def test_subdivision_matches_an_independent_computation(size, num_points):
    # size_divisibility=4 leaves a 9x11 stride-4 map for a 36x44 input, so the 2x grids are 18x22 and 36x44.
    config = tiny_config(use_point_rend=True, point_rend_subdivision_num_points=num_points, size_divisibility=4)
    model = FaPNForSemanticSegmentation(config).double().eval()
    _randomise(model)
    pixel_values = torch.randn(1, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        pyramid = model.fapn(pixel_values).feature_maps
        coarse = model.decode_head(pyramid)
        logits = model(pixel_values).logits
    assert coarse.shape[-2:] == (size[0] // 4, size[1] // 4)
    expected = reference_subdivision(
        coarse[0].numpy(), pyramid[0][0].numpy(), model.point_head, steps=2, num_points=num_points
    )
    assert expected.shape[-2:] == size
    np.testing.assert_allclose(logits[0].numpy(), expected, rtol=0, atol=1e-10)


def test_refinement_reads_the_stride4_coarse_logits_not_the_upsampled_map():
    """Zeroing the coarse-logit inputs of the point head must change nothing but the refined points, and a point
    head that only echoes its coarse input must write back the stride-4 values sampled at the cell centres."""
    config = tiny_config(use_point_rend=True, point_rend_subdivision_steps=1, point_rend_subdivision_num_points=30)
    model = FaPNForSemanticSegmentation(config).double().eval()
    _randomise(model)
    num_labels, width = config.num_labels, config.neck_channels
    head = model.point_head
    with torch.no_grad():  # an identity point head on the coarse part: hidden = relu(coarse), predictor = identity
        head.layers[0].weight.zero_()
        head.layers[0].bias.fill_(0.0)
        head.layers[0].weight[:num_labels, width:, 0] = torch.eye(num_labels)
        head.layers[0].bias[:num_labels] = 100.0  # keeps the ReLU linear
        for layer in head.layers[1:]:
            layer.weight.zero_()
            layer.weight[:num_labels, :num_labels, 0] = torch.eye(num_labels)
            layer.bias.zero_()
        head.predictor.weight.zero_()
        head.predictor.weight[:, :num_labels, 0] = torch.eye(num_labels)
        head.predictor.bias.fill_(-100.0)
    pixel_values = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        coarse = model.decode_head(model.fapn(pixel_values).feature_maps)
        refined = model.point_rend_inference(coarse, model.fapn(pixel_values).feature_maps[0])
    upsampled = torch.nn.functional.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
    changed = (refined != upsampled).any(dim=1)[0].nonzero().tolist()
    assert 0 < len(changed) <= 30
    coarse_np = coarse[0].numpy()
    height, width_cells = refined.shape[-2:]
    for row, col in changed:
        x, y = (col + 0.5) / width_cells, (row + 0.5) / height
        np.testing.assert_allclose(
            refined[0, :, row, col].numpy(), sample_with_zero_padding(coarse_np, x, y), rtol=0, atol=1e-6
        )
