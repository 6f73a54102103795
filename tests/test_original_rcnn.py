"""The independent re-implementation of detectron2's R-CNN inference (`original_rcnn.py`) checked on its own, so that
the detector converter's parity tests rest on a reference that is right where it could be wrong: anchors, box coding,
ROI level assignment, score filtering with background last, the paste (against a per-pixel brute force), the panoptic
combination, the test resize, the real key layout of each released architecture, and a random checkpoint that
exercises every branch (deformation offsets, ~1000 proposals over several levels, 100 detections, masks, stuff),
read back through the package's restricted `.pkl` reader."""

from __future__ import annotations

import math

import numpy as np
import original_rcnn as original
import pytest
import torch
import torchvision

from fapn_hf.convert import read_checkpoint

SHORT_EDGE, MAX_SIZE = 480, 800  # the test resize: 240x320 -> 480x640, so that boxes reach the pooler's p5


# -------------------------------------------------------------------------------------------------- hand-checked


def test_cell_anchors_are_not_rounded() -> None:
    w = math.sqrt(32**2 / 0.5)  # 45.2548..., h = 0.5 * w
    expected = torch.tensor([[-w / 2, -w / 4, w / 2, w / 4], [-16, -16, 16, 16], [-w / 4, -w / 2, w / 4, w / 2]])
    torch.testing.assert_close(original.cell_anchors(32), expected)
    assert original.cell_anchors(32)[0, 2].item() != round(original.cell_anchors(32)[0, 2].item())


def test_grid_anchors_use_the_level_stride_location_major() -> None:
    # P6 of an 800x1216 input is 13x19 at stride 64 (torchvision would infer 800 // 13 = 61 for the rows).
    anchors = original.grid_anchors((13, 19), 64, 512)
    assert anchors.shape == (13 * 19 * 3, 4)
    row, column, ratio = 12, 3, 1  # the square anchor of the last row
    box = anchors[(row * 19 + column) * 3 + ratio]
    torch.testing.assert_close(box, torch.tensor([3 * 64 - 256.0, 12 * 64 - 256.0, 3 * 64 + 256.0, 12 * 64 + 256.0]))


def test_apply_deltas_by_hand() -> None:
    box = torch.tensor([[10.0, 20.0, 50.0, 100.0]])  # centre (30, 60), 40 x 80
    deltas = torch.tensor([[10 * 0.1, 10 * -0.2, 5 * math.log(2), 5 * math.log(0.5)]])
    # centre (30 + 4, 60 - 16), 80 x 40
    torch.testing.assert_close(
        original.apply_deltas(deltas, box, original.ROI_BBOX_REG_WEIGHTS), torch.tensor([[-6.0, 24.0, 74.0, 64.0]])
    )
    huge = original.apply_deltas(torch.tensor([[0.0, 0.0, 100.0, 0.0]]), box, (1, 1, 1, 1))
    assert huge[0, 2] - huge[0, 0] == pytest.approx(40 * 1000 / 16, rel=1e-5)  # dw clamped at log(1000/16)


def test_roi_level_assignment_and_aligned_pooling() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = [torch.randn(1, 2, 64 // 2**k, 64 // 2**k, generator=generator) for k in range(4)]
    # sqrt(area) 10 -> p2, 112 -> p3 (log2(0.5) = -1 exactly), 223 -> p3, 224 -> p4, 448 -> p5, 1000 -> p5
    sides = [10.0, 112.0, 223.0, 224.0, 448.0, 1000.0]
    levels = [0, 1, 1, 2, 3, 3]
    boxes = torch.tensor([[3.0, 5.0, 3.0 + s, 5.0 + s] for s in sides])
    pooled = original.roi_pool(maps, [boxes], 7)
    for index, level in enumerate(levels):
        roi = torch.cat([torch.zeros(1, 1), boxes[index : index + 1]], dim=1)
        expected = torchvision.ops.roi_align(maps[level], roi, 7, 1 / 2 ** (level + 2), sampling_ratio=0, aligned=True)
        torch.testing.assert_close(pooled[index : index + 1], expected, atol=0, rtol=0)


def test_box_inference_background_last_threshold_and_class_nms() -> None:
    boxes = torch.tensor([[0, 0, 10, 10, 0, 0, 10, 10], [1, 1, 11, 11, 50, 50, 60, 60], [0, 0, 10, 10, -5, -5, 99, 99]])
    probabilities = torch.tensor([[0.50, 0.04, 0.46], [0.40, 0.30, 0.30], [0.02, 0.03, 0.95]])
    kept, scores, classes = original.fast_rcnn_inference_single_image(boxes.float(), probabilities, (40, 80))
    # class 0: rows 0 and 1 overlap (IoU 0.68 > 0.5), row 0 wins; class 1: row 1 (0.30); row 2 is background (0.95)
    # and its classes score 0.02 / 0.03 <= 0.05; row 0's class 1 (0.04) too.
    torch.testing.assert_close(scores, torch.tensor([0.50, 0.30]))
    assert classes.tolist() == [0, 1]
    torch.testing.assert_close(kept, torch.tensor([[0.0, 0, 10, 10], [50, 40, 60, 40]]))  # clipped to 40 x 80


def _brute_force_paste(mask: np.ndarray, box: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per pixel, in float64: the mask's bilinear value at the pixel centre mapped into the box (cells of size
    box / M, zero outside the mask), i.e. grid_sample(align_corners=False) without grid_sample."""
    size = mask.shape[0]
    padded = np.zeros((size + 2, size + 2))
    padded[1:-1, 1:-1] = mask
    values = np.zeros((height, width))
    x0, y0, x1, y1 = box
    for i in range(height):
        v = (i + 0.5 - y0) / (y1 - y0) * size - 0.5
        for j in range(width):
            u = (j + 0.5 - x0) / (x1 - x0) * size - 0.5
            if not (-1 < u < size and -1 < v < size):
                continue
            fu, fv = math.floor(u), math.floor(v)
            au, av = u - fu, v - fv
            cell = padded[fv + 1 : fv + 3, fu + 1 : fu + 3]
            values[i, j] = (
                cell[0, 0] * (1 - au) * (1 - av) + cell[0, 1] * au * (1 - av)
                + cell[1, 0] * (1 - au) * av + cell[1, 1] * au * av
            )  # fmt: skip
    return values


def test_paste_equals_a_per_pixel_brute_force() -> None:
    rng = np.random.default_rng(0)
    height, width = 40, 56
    masks = rng.uniform(0, 1, (4, 28, 28)).astype(np.float32)
    # a box inside, one with fractional corners, one larger than 56 px, one running off the image
    boxes = np.array(
        [[5.0, 6.0, 25.0, 30.0], [10.3, 2.7, 17.9, 11.2], [-3.5, 1.0, 60.0, 39.0], [40.2, 30.6, 70.0, 52.0]],
        dtype=np.float32,
    )
    pasted = original.paste_masks_in_image(torch.from_numpy(masks), torch.from_numpy(boxes), height, width)
    assert pasted.dtype == torch.bool and pasted.shape == (4, height, width)
    for mask, box, result in zip(masks, boxes, pasted):
        values = _brute_force_paste(mask.astype(np.float64), box.astype(np.float64), height, width)
        decided = np.abs(values - 0.5) > 1e-5  # float32 rounding may flip a pixel sitting on the threshold
        assert decided.mean() > 0.99
        np.testing.assert_array_equal(result.numpy()[decided], (values >= 0.5)[decided])
        assert 0 < result.sum() < height * width


def test_panoptic_combination_by_hand() -> None:
    semantic = torch.zeros(100, 100, dtype=torch.long)
    semantic[:, 50:] = 2  # 5000 pixels; the instances take 600 + 300 of them, 4100 >= 4096 -> stuff
    semantic[:10, :50] = 3  # 500 pixels: under the 4096 limit
    semantic[10:, :50] = 0  # "things": never stuff
    masks = torch.zeros(4, 100, 100, dtype=torch.bool)
    masks[0, 20:40, 20:80] = True  # 1200 px, score 0.9
    masks[1, 30:50, 20:80] = True  # 1200 px, 600 taken (exactly 0.5: kept, painted on the free 600)
    masks[2, 20:35, 20:80] = True  # 900 px, all taken -> skipped
    masks[3, 80:90, 0:10] = True  # score 0.4 < 0.5 -> stops there
    instances = {
        "scores": torch.tensor([0.9, 0.7, 0.8, 0.4]),
        "pred_classes": torch.tensor([5, 6, 7, 8]),
        "pred_masks": masks,
    }
    panoptic, segments = original.combine_semantic_and_instance_outputs(instances, semantic)
    assert [(s["id"], s["isthing"], s["category_id"]) for s in segments] == [(1, True, 5), (2, True, 6), (3, False, 2)]
    assert segments[1]["instance_id"] == 1 and segments[2]["area"] == 5000 - 20 * 30 - 10 * 30
    assert (panoptic == 1).sum() == 1200 and (panoptic == 2).sum() == 600
    assert (panoptic == 3).sum() == segments[2]["area"] and (panoptic[80:90, 0:10] == 0).all()


def test_resize_shortest_edge_sizes() -> None:
    assert original.resize_shortest_edge(np.zeros((480, 640, 3), np.uint8), 800, 1333).shape == (800, 1067, 3)
    assert original.resize_shortest_edge(np.zeros((300, 1000, 3), np.uint8), 800, 1333).shape == (400, 1333, 3)


# ---------------------------------------------------------------------------------------------- the real layouts


@pytest.mark.parametrize("name", sorted(original.ARCHITECTURES))
def test_tiny_architectures_keep_the_original_key_layout(name: str) -> None:
    arch = original.ARCHITECTURES[name]
    keys = set(original.OriginalRCNN(arch.tiny()).state_dict())  # the same names as full width: only shapes differ
    assert f"backbone.bottom_up.res4.{arch.blocks[2] - 1}.conv3.norm.running_var" in keys
    assert "backbone.bottom_up.res2.0.shortcut.norm.weight" in keys and not any("num_batches" in k for k in keys)
    heads = {
        "proposal_generator.rpn_head.conv.weight",
        "proposal_generator.rpn_head.objectness_logits.bias",
        "proposal_generator.rpn_head.anchor_deltas.weight",
        "roi_heads.box_head.fc2.bias",
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
    }
    assert heads <= keys
    assert ("roi_heads.mask_head.deconv.weight" in keys) == arch.has_masks
    assert ("roi_heads.mask_head.mask_fcn4.bias" in keys) == arch.has_masks
    assert ("sem_seg_head.p5.4.norm.bias" in keys) == arch.is_panoptic
    if arch.fapn:
        assert {"backbone.fan_align5.weight", "backbone.fan_align2.dcpack_L2.conv_offset_mask.bias"} <= keys
        assert (
            "backbone.fan_align3.lateral_conv.conv_atten.weight" in keys and "backbone.fpn_output5.weight" not in keys
        )
    else:
        assert {"backbone.fpn_lateral2.weight", "backbone.fpn_output5.bias"} <= keys
        assert not any("fan_align" in k for k in keys)


def test_full_size_shapes_of_the_released_heads() -> None:
    state = original.OriginalRCNN(original.ARCHITECTURES["panoptic_fpn-fapn-r50"]).state_dict()
    expected = {
        "roi_heads.box_head.fc1.weight": (1024, 256 * 7 * 7),
        "roi_heads.box_predictor.cls_score.weight": (81, 1024),
        "roi_heads.box_predictor.bbox_pred.weight": (320, 1024),
        "roi_heads.mask_head.predictor.weight": (80, 256, 1, 1),
        "roi_heads.mask_head.deconv.weight": (256, 256, 2, 2),
        "sem_seg_head.predictor.weight": (54, 128, 1, 1),
        "proposal_generator.rpn_head.anchor_deltas.weight": (12, 256, 1, 1),
        "backbone.fan_align2.dcpack_L2.conv_offset_mask.weight": (216, 256, 3, 3),
        "backbone.fan_align5.weight": (256, 2048, 1, 1),
    }
    assert {name: tuple(state[name].shape) for name in expected} == expected


# ------------------------------------------------------------------------------------------ a random checkpoint


@pytest.fixture(scope="module")
def panoptic_checkpoint():
    image = original.sample_image()
    state, model = original.random_checkpoint(
        "panoptic_fpn-fapn-r50", seed=3, image=image, short_edge=SHORT_EDGE, max_size=MAX_SIZE
    )
    return image, state, model


def test_random_checkpoint_exercises_every_branch(panoptic_checkpoint) -> None:
    image, state, model = panoptic_checkpoint
    offsets = []
    hooks = [
        m.conv_offset_mask.register_forward_hook(lambda _m, _i, out: offsets.append(out[:, : 2 * out.shape[1] // 3]))
        for m in model.modules()
        if m.__class__.__name__ == "DCN"
    ]
    try:
        result = original.predict(model, image, SHORT_EDGE, MAX_SIZE)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(offsets) == 3 and all(o.abs().mean() > 0.5 for o in offsets)  # pixels of deformation
    boxes, _ = model.last_proposals[0]
    assert len(boxes) == original.RPN_POST_NMS_TOPK_TEST
    levels = torch.floor(4 + torch.log2(((boxes[:, 2:] - boxes[:, :2]).prod(1)).sqrt() / 224 + 1e-8)).clamp(2, 5)
    assert levels.unique().tolist() == [2, 3, 4, 5]  # the pooler reads every pyramid level
    instances = result["instances"]
    assert len(instances["scores"]) == original.DETECTIONS_PER_IMAGE
    assert (instances["scores"] >= 0.5).sum() >= 10 and (instances["scores"] < 0.5).sum() >= 1
    assert len(instances["pred_classes"].unique()) >= 2
    assert instances["pred_masks"].shape == (100, *image.shape[:2]) and instances["pred_masks"].any(dim=(1, 2)).all()
    panoptic, segments = result["panoptic_seg"]
    assert sum(s["isthing"] for s in segments) >= 5 and sum(not s["isthing"] for s in segments) >= 1
    assert panoptic.max().item() == len(segments)


def test_pkl_round_trip_through_the_restricted_reader(panoptic_checkpoint, tmp_path) -> None:
    image, state, model = panoptic_checkpoint
    path = original.save_pkl(state, tmp_path / "model_final.pkl")
    assert b"numpy.core.multiarray" in path.read_bytes()  # written as numpy 1.x wrote the released files
    checkpoint = read_checkpoint(path)
    assert checkpoint.keys == list(state) and checkpoint.extras["__author__"] == "Detectron2 Model Zoo"
    assert all(torch.equal(checkpoint.tensors[k], v) for k, v in state.items())
    reloaded = original.load_original(checkpoint.tensors)
    assert reloaded.arch == model.arch
    expected = original.predict(model, image, SHORT_EDGE, MAX_SIZE)["instances"]
    actual = original.predict(reloaded, image, SHORT_EDGE, MAX_SIZE)["instances"]
    assert all(torch.equal(actual[k], expected[k]) for k in expected)


def test_pth_with_pixel_statistics_sets_the_normalisation(tmp_path) -> None:
    state, _ = original.random_checkpoint(
        "faster_rcnn-fpn-r50", seed=1, short_edge=SHORT_EDGE, max_size=MAX_SIZE, with_pixel_statistics=True
    )
    state["pixel_mean"] = torch.tensor([100.0, 110.0, 120.0])
    checkpoint = read_checkpoint(original.save_pth(state, tmp_path / "model_final.pth"))
    model = original.load_original(checkpoint.tensors)
    assert model.pixel_mean.flatten().tolist() == [100.0, 110.0, 120.0]
    with pytest.raises(ValueError, match="fan_align"):
        original.load_original({k: v for k, v in state.items() if not k.startswith("backbone.fpn_lateral5")})
