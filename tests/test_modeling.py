"""Architecture fidelity (SPEC 2.1-2.6, 2.9), shapes, gradients, losses and label checks; the model inputs and
loading every family checks the same way (issue 19)."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import set_backbone_gammas_to_one, tiny_config, tiny_resnet_backbone_config
from families_small import PIXEL_CLASS_FAMILIES, SMALL, output_signature, training_inputs
from transformers import SwinConfig, TimmBackboneConfig

from fapn_hf import FAMILIES, FaPNConfig, FaPNForSemanticSegmentation, FaPNModel, preset_config
from fapn_hf.inference.predictor import SegmentationPredictor, TTAConfig
from fapn_hf.labels import check_label_values
from fapn_hf.modeling import fapn_layers
from fapn_hf.modeling.modeling_fapn import (
    FeatureAlignmentModule,
    FeatureSelectionModule,
    most_uncertain_grid_points,
    point_sample,
    sample_training_points,
    uncertainty,
)


def _count_millions(**settings) -> float:
    with torch.device("meta"):  # counting needs shapes only
        model = FaPNForSemanticSegmentation(FaPNConfig(num_labels=19, **settings))
    return sum(p.numel() for p in model.parameters()) / 1e6


# The paper's Table 1 (PointRend semantic FPN, D = 256, 19 classes) and SPEC 2.9's finer figures.
PARAMETER_TABLE = [
    ("FPN R50", dict(backbone="resnet50", use_fam=False, use_fsm=False, use_point_rend=True), 28.6, 28.69),
    ("FPN R101", dict(backbone="resnet101", use_fam=False, use_fsm=False, use_point_rend=True), 47.6, 47.68),
    ("FPN + FAM R50", dict(backbone="resnet50", use_fam=True, use_fsm=False, use_point_rend=True), 31.7, None),
    ("FaPN R50", dict(backbone="resnet50", use_point_rend=True), 33.1, 33.13),
    ("FaPN R50, no point head", dict(backbone="resnet50"), 32.9, 32.92),
    ("FPN R50, no point head", dict(backbone="resnet50", use_fam=False, use_fsm=False), 28.4, 28.48),
    ("FaPN R18, no point head", dict(backbone="resnet18"), 18.5, 18.56),
]


@pytest.mark.parametrize("name, settings, truncated, rounded", PARAMETER_TABLE, ids=[r[0] for r in PARAMETER_TABLE])
def test_parameter_counts_reproduce_the_paper(name, settings, truncated, rounded):
    millions = _count_millions(**settings)
    assert math.floor(millions * 10) / 10 == truncated, f"{name}: {millions:.4f} M"
    if rounded is not None:
        assert round(millions, 2) == rounded, f"{name}: {millions:.4f} M"


def test_feature_selection_module_matches_its_formula():
    """SPEC 2.1 in float64, values and gradients, with a different attention per image of the batch."""
    fsm = FeatureSelectionModule(6, 4).double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)

    def formula(x):
        attention = torch.sigmoid(F.conv2d(x.mean(dim=(2, 3), keepdim=True), fsm.attention.conv.weight))
        return F.conv2d(x + x * attention, fsm.projection.conv.weight)

    grad_output = torch.randn(2, 4, 5, 7, dtype=torch.float64)
    inputs = [x, *fsm.parameters()]
    actual, expected = fsm(x), formula(x)
    torch.testing.assert_close(actual, expected, atol=1e-12, rtol=1e-12)
    for a, e in zip(
        torch.autograd.grad(actual, inputs, grad_output), torch.autograd.grad(expected, inputs, grad_output)
    ):
        torch.testing.assert_close(a, e, atol=1e-12, rtol=1e-12)
    assert fsm.attention.conv.bias is None and fsm.projection.conv.bias is None


def test_fresh_feature_alignment_module_equals_its_no_offset_computation():
    """Zero-initialised offsets and masks: FAM = relu(0.5 * conv3x3(upsampled) + bias) + lateral."""
    fam = FeatureAlignmentModule(channels=16, deformable_groups=4, norm="", implementation="torch")
    lateral, coarse = torch.randn(2, 16, 10, 14), torch.randn(2, 16, 5, 7)
    upsampled = F.interpolate(coarse, size=(10, 14), mode="bilinear", align_corners=False)
    dcn = fam.deform_conv
    expected = F.relu(F.conv2d(upsampled, 0.5 * dcn.weight, dcn.bias, padding=1)) + lateral
    torch.testing.assert_close(fam(lateral, coarse), expected, atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(dcn.offset_mask_conv.weight) == 0 and torch.count_nonzero(dcn.offset_mask_conv.bias) == 0


@pytest.mark.parametrize("norm", ["", "GN"])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_feature_alignment_module_is_spec_2_2_with_torchvision(norm, grad):
    """SPEC 2.2 written out with torchvision's kernel, in float64: guide = offset_conv(concat(lateral, 2 * up)),
    offsets = its first two thirds of offset_mask_conv(guide), mask = sigmoid of the last third, output
    relu(dcn(up)) + lateral."""
    fam = FeatureAlignmentModule(channels=32, deformable_groups=4, norm=norm, implementation="torch").double()
    torch.nn.init.normal_(fam.deform_conv.offset_mask_conv.weight, std=0.05)
    torch.nn.init.normal_(fam.deform_conv.offset_mask_conv.bias, std=0.5)
    if norm:
        torch.nn.init.normal_(fam.offset_conv.norm.weight)
        torch.nn.init.normal_(fam.offset_conv.norm.bias)
    lateral = torch.randn(2, 32, 10, 14, dtype=torch.float64)
    coarse = torch.randn(2, 32, 5, 7, dtype=torch.float64)
    dcn = fam.deform_conv
    with torch.no_grad():
        upsampled = F.interpolate(coarse, size=(10, 14), mode="bilinear", align_corners=False)
        guide = fam.offset_conv.norm(F.conv2d(torch.cat([lateral, 2 * upsampled], 1), fam.offset_conv.conv.weight))
        om = dcn.offset_mask_conv(guide)
        aligned = torchvision.ops.deform_conv2d(
            upsampled, om[:, :72], dcn.weight, dcn.bias, padding=1, mask=torch.sigmoid(om[:, 72:])
        )
        expected = F.relu(aligned) + lateral
    with torch.set_grad_enabled(grad):
        actual = fam(lateral, coarse)
    assert actual.requires_grad == grad
    torch.testing.assert_close(actual.detach(), expected, atol=1e-10, rtol=1e-10)


def test_feature_alignment_gradients_match_the_spec_formula():
    fam = FeatureAlignmentModule(channels=16, deformable_groups=2, norm="", implementation="torch").double()
    torch.nn.init.normal_(fam.deform_conv.offset_mask_conv.weight, std=0.1)
    lateral = torch.randn(1, 16, 8, 6, dtype=torch.float64, requires_grad=True)
    coarse = torch.randn(1, 16, 4, 3, dtype=torch.float64, requires_grad=True)
    dcn = fam.deform_conv

    def spec(lateral, coarse):
        upsampled = F.interpolate(coarse, size=(8, 6), mode="bilinear", align_corners=False)
        om = dcn.offset_mask_conv(F.conv2d(torch.cat([lateral, 2 * upsampled], 1), fam.offset_conv.conv.weight))
        mask = torch.sigmoid(om[:, 36:])
        return (
            F.relu(torchvision.ops.deform_conv2d(upsampled, om[:, :36], dcn.weight, dcn.bias, 1, 1, 1, mask)) + lateral
        )

    grad_output = torch.randn(1, 16, 8, 6, dtype=torch.float64)
    parameters = [lateral, coarse, *fam.parameters()]
    expected = torch.autograd.grad(spec(lateral, coarse), parameters, grad_output)
    actual = torch.autograd.grad(fam(lateral, coarse), parameters, grad_output)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-9)


def test_fapn_and_fpn_necks_are_one_switch_apart():
    fapn = FaPNForSemanticSegmentation(tiny_config()).fapn.neck
    fpn = FaPNForSemanticSegmentation(tiny_config(use_fam=False, use_fsm=False)).fapn.neck
    assert fapn.top_output_conv is None and len(fapn.alignments) == 3  # no output conv on P5 with FAM
    assert fpn.alignments is None and fpn.top_output_conv is not None
    assert all(isinstance(m, FeatureSelectionModule) for m in fapn.lateral_convs)
    assert all(m.conv.bias is not None for m in fpn.lateral_convs)  # plain 1x1 laterals with bias


def test_fpn_baseline_is_the_detectron2_top_down_path():
    model = FaPNModel(tiny_config(use_fam=False, use_fsm=False)).eval()
    neck = model.neck
    c = [torch.randn(1, ch, 32 // s, 64 // s) for ch, s in zip(model.backbone.channels, (1, 2, 4, 8))]
    p5 = neck.top_lateral_conv(c[3])
    p4 = neck.lateral_convs[2](c[2]) + F.interpolate(p5, scale_factor=2.0, mode="nearest")
    p3 = neck.lateral_convs[1](c[1]) + F.interpolate(p4, scale_factor=2.0, mode="nearest")
    outputs = neck(c)
    torch.testing.assert_close(outputs[3], neck.top_output_conv(p5))
    torch.testing.assert_close(outputs[2], neck.output_convs[2](p4))
    torch.testing.assert_close(outputs[1], neck.output_convs[1](p3))


def test_semantic_head_has_the_panoptic_fpn_towers():
    head = FaPNForSemanticSegmentation(tiny_config()).decode_head
    assert [len(blocks) for blocks in head.scale_heads] == [1, 1, 2, 3]
    for blocks in head.scale_heads:
        for block in blocks:
            assert isinstance(block.norm, torch.nn.GroupNorm) and block.norm.num_groups == 32
            assert block.conv.bias is None and block.conv.kernel_size == (3, 3)
    assert head.predictor.conv.kernel_size == (1, 1) and head.predictor.conv.bias is not None


@pytest.mark.parametrize("size", [(64, 96), (45, 77), (33, 31), (1, 1), (100, 20)])
def test_any_input_size_gives_logits_at_input_resolution(size):
    model = FaPNForSemanticSegmentation(tiny_config(neck_norm="GN", neck_channels=64)).eval()
    for batch in (1, 2):  # one tiny image: 1x1 top level under GroupNorm
        with torch.no_grad():
            logits = model(torch.randn(batch, 3, *size)).logits
        assert logits.shape == (batch, 4, *size)
        assert torch.isfinite(logits).all()


def test_odd_sizes_are_padded_with_zeros_and_cropped():
    model = FaPNForSemanticSegmentation(tiny_config()).eval()
    x = torch.randn(1, 3, 45, 77)
    padded = F.pad(x, (0, 96 - 77, 0, 64 - 45))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, model(padded).logits[:, :, :45, :77], atol=1e-5, rtol=1e-5)


def test_pyramid_shapes_and_hidden_states():
    model = FaPNModel(tiny_config()).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 128), output_hidden_states=True)
    assert [tuple(p.shape) for p in out.feature_maps] == [(1, 32, 16, 32), (1, 32, 8, 16), (1, 32, 4, 8), (1, 32, 2, 4)]
    assert out.last_hidden_state is out.feature_maps[0]
    assert [p.shape[1] for p in out.backbone_feature_maps] == [64, 128, 256, 512]
    assert out.hidden_states is not None and len(out.hidden_states) >= 4
    as_tuple = model(torch.randn(1, 3, 64, 64), return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].shape == (1, 32, 16, 16) and len(as_tuple[1]) == 4


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"use_fam": False, "use_fsm": False},
        {"use_fsm": False},
        {"neck_norm": "GN", "neck_channels": 64},
        {"neck_norm": "BN"},
        {"use_point_rend": True},
    ],
    ids=["fapn", "fpn", "fam-only", "gn", "bn", "pointrend"],
)
def test_gradients_reach_every_parameter(overrides):
    model = FaPNForSemanticSegmentation(tiny_config(**overrides)).train()
    set_backbone_gammas_to_one(model)
    labels = torch.randint(0, 4, (2, 64, 64))
    labels[:, :8] = 255
    x = torch.randn(2, 3, 64, 64)
    # The zero-initialised offset/mask convs pass no gradient to the FAM guide until their first update (as in the
    # original), so take one step first.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x, labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model(x, labels=labels).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"no gradient reaches: {dead}"


def test_loss_is_cross_entropy_ignoring_255():
    model = FaPNForSemanticSegmentation(tiny_config()).eval()
    x, labels = torch.randn(2, 3, 40, 50), torch.randint(0, 4, (2, 40, 50))
    labels[0, :20] = 255
    with torch.no_grad():
        out = model(x, labels=labels)
    valid = labels != 255
    manual = F.log_softmax(out.logits, dim=1).gather(1, labels.clamp(max=3).unsqueeze(1))[:, 0][valid].mean().neg()
    torch.testing.assert_close(out.loss, manual, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "bad_value, message", [(7, r"\[7\].*\[0, 4\)"), (-1, r"\[-1\]"), (4, r"\[4\].*ignore index 255")]
)
def test_labels_outside_the_label_map_are_reported(bad_value, message):
    model = FaPNForSemanticSegmentation(tiny_config())
    labels = torch.randint(0, 4, (1, 32, 32))
    labels[0, 3, 3] = bad_value
    with pytest.raises(ValueError, match=message):
        model(torch.randn(1, 3, 32, 32), labels=labels)


def test_labels_of_the_wrong_shape_or_type_are_reported():
    model = FaPNForSemanticSegmentation(tiny_config())
    with pytest.raises(ValueError, match=r"labels must have shape .*\(1, 32, 32\), got \(1, 32, 30\)"):
        model(torch.randn(1, 3, 32, 32), labels=torch.zeros(1, 32, 30, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class ids"):
        model(torch.randn(1, 3, 32, 32), labels=torch.zeros(1, 32, 32))


def test_pixel_mask_is_checked_and_returned_with_the_logits():
    model = FaPNForSemanticSegmentation(tiny_config()).eval()
    x, mask = torch.randn(2, 3, 40, 50), torch.ones(2, 40, 50, dtype=torch.long)
    with torch.no_grad():
        out = model(x, pixel_mask=mask)
        torch.testing.assert_close(out.logits, model(x).logits)  # the mask does not change the computation
    assert out.pixel_mask is mask
    with pytest.raises(ValueError, match=r"pixel_mask must have shape .*\(2, 40, 50\), got \(2, 40, 49\)"):
        model(x, pixel_mask=mask[..., :49])


def test_point_rend_training_adds_the_point_loss_and_inference_refines():
    model = FaPNForSemanticSegmentation(tiny_config(use_point_rend=True, point_rend_subdivision_num_points=50))
    x, labels = torch.randn(1, 3, 64, 64), torch.randint(0, 4, (1, 64, 64))
    model.train()
    train_out = model(x, labels=labels)
    assert train_out.loss > F.cross_entropy(train_out.logits, labels)  # coarse + point loss
    model.eval()
    with torch.no_grad():
        refined = model(x).logits
        pyramid = model.fapn(x).feature_maps
        plain = model.decode_head(pyramid)
        for _ in range(2):  # the two subdivision steps' upsampling, without re-predicting any point
            plain = F.interpolate(plain, scale_factor=2, mode="bilinear", align_corners=False)
    changed = (refined != plain).any(dim=1)
    # Step 1 re-predicts 50 points, each then spread over a 4x4 window by step 2's upsample; step 2 re-predicts 50.
    assert 0 < changed.sum() <= 50 * 16 + 50
    assert refined.shape == plain.shape


def test_point_sample_at_cell_centres_reads_the_cells():
    features = torch.randn(2, 3, 5, 7)
    indices, coords = most_uncertain_grid_points(torch.randn(2, 1, 5, 7), 12)
    sampled = point_sample(features, coords)
    expected = features.flatten(2).gather(2, indices.unsqueeze(1).expand(-1, 3, -1))
    torch.testing.assert_close(sampled, expected)


def test_uncertain_grid_points_are_the_top_uncertainty_cells():
    logits = torch.randn(1, 4, 6, 6)
    indices, _ = most_uncertain_grid_points(uncertainty(logits), 5)
    brute = sorted(range(36), key=lambda i: -float(uncertainty(logits).flatten()[i]))[:5]
    assert sorted(indices[0].tolist()) == sorted(brute)


def test_training_points_mix_uncertain_and_random():
    points = sample_training_points(
        torch.randn(3, 4, 8, 8), num_points=40, oversample_ratio=3, importance_sample_ratio=0.75
    )
    assert points.shape == (3, 40, 2) and points.min() >= 0 and points.max() <= 1


def test_transformers_resnet_backbone_msra_style():
    model = FaPNForSemanticSegmentation(
        tiny_config(backbone=None, backbone_config=tiny_resnet_backbone_config())
    ).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 70)).logits.shape == (1, 4, 50, 70)


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"backbone": None, "backbone_config": tiny_resnet_backbone_config()}],
    ids=["timm", "transformers-resnet"],
)
def test_activation_checkpointing_covers_backbone_neck_and_head_and_keeps_the_gradients(overrides, use_reentrant):
    model = FaPNForSemanticSegmentation(tiny_config(use_point_rend=True, **overrides)).train()
    set_backbone_gammas_to_one(model)
    x, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    torch.manual_seed(1)
    model(x, labels=labels).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    flagged = {name for name, m in model.named_modules() if getattr(m, "gradient_checkpointing", False)}
    neck_and_head = {"fapn.neck.lateral_convs.0", "fapn.neck.alignments.2", "decode_head.scale_heads.3"}
    assert neck_and_head <= flagged
    if overrides:
        assert {f"fapn.backbone.encoder.stages.{i}" for i in range(4)} <= flagged
    else:
        assert model.fapn.backbone._backbone.grad_checkpointing
    recomputed = []
    model.fapn.neck.alignments[0].offset_conv.norm.register_forward_hook(lambda *args: recomputed.append(1))
    torch.manual_seed(1)
    model(x, labels=labels).loss.backward()
    assert len(recomputed) == 2  # forward, and again in backward
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-6, rtol=1e-4, msg=name)

    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing
    if not overrides:
        assert not model.fapn.backbone._backbone.grad_checkpointing


def test_transformers_swin_backbone():
    backbone = SwinConfig(
        image_size=64,
        embed_dim=32,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    model = FaPNForSemanticSegmentation(tiny_config(backbone=None, backbone_config=backbone)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).logits.shape == (1, 4, 64, 96)


def test_timm_swin_channels_last_maps_become_nchw():
    model = FaPNModel(tiny_config(backbone="swin_tiny_patch4_window7_224")).eval()
    assert model.backbone_channels_last
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert [tuple(c.shape[1:]) for c in out.backbone_feature_maps] == [
        (96, 56, 56),
        (192, 28, 28),
        (384, 14, 14),
        (768, 7, 7),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("point_rend", [False, True], ids=["semantic-fpn", "pointrend"])
def test_whole_model_exports_to_onnx(tmp_path, point_rend):
    onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX export check needs the [test] extra")

    class LogitsOnly(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values).logits

    model = FaPNForSemanticSegmentation(tiny_config(use_point_rend=point_rend)).eval()
    x = torch.randn(1, 3, 64, 96)
    path = tmp_path / "fapn.onnx"
    torch.onnx.export(LogitsOnly(model).eval(), (x,), str(path), dynamo=True, opset_version=18)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("as_array", [np.asarray, torch.as_tensor], ids=["numpy", "torch"])
def test_one_label_check_for_arrays_and_tensors(as_array):
    """The model, the Trainer, the data pipeline, the metrics and the colour maps share `check_label_values`: one
    message naming the values, the pixel count, the allowed range and the ignore index, for NumPy and torch alike."""
    labels = as_array(np.array([[0, 9, -1, 255, 9]]))
    expected = (
        r"^labels contain values \[-1, 9\] \(3 pixels\) outside the label map: "
        r"expected class ids in \[0, 4\) or the ignore index 255$"
    )
    with pytest.raises(ValueError, match=expected):
        check_label_values(labels, num_labels=4, ignore_index=255)
    with pytest.raises(ValueError, match=r"predictions contain values \[-1, 9, 255\].*\[0, 4\)\. hint$"):
        check_label_values(labels, num_labels=4, ignore_index=None, name="predictions", hint=lambda values: ". hint")
    check_label_values(as_array(np.array([[0, 3, 255]])), num_labels=4, ignore_index=255)
    many = as_array(np.arange(20, 40).reshape(4, 5))
    with pytest.raises(ValueError, match=r"\[20, 21, 22, 23, 24, 25, 26, 27, 28, 29, \.\.\. \(20 distinct values\)\]"):
        check_label_values(many, num_labels=4, ignore_index=255)


# --------------------------------------------------------------------------- model inputs, the same for every family
# (issue 19: one kernel check, `fapn_layers.check_pixel_values`, called by every family's forward)

FAMILY_NAMES = sorted(FAMILIES)


@functools.cache
def small_family_model(name: str) -> torch.nn.Module:
    """The family's small build (tests/test_families.py's `SMALL`), in eval mode with non-zero FAM offsets."""
    preset, options = SMALL[name]
    torch.manual_seed(0)
    model = FAMILIES[name].head_class(preset_config(preset, ["a", "b", "c"], **options)).eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "offset_mask_conv"):
                torch.nn.init.normal_(module.offset_mask_conv.weight, std=0.05)
    return model


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_pixel_values_of_another_float_dtype_are_cast_to_the_models_saying_so_once(name, dtype, monkeypatch):
    """Was torch's "expected scalar type Double but found Float" from inside the first convolution."""
    monkeypatch.setattr(fapn_layers, "_ANNOUNCED_CASTS", set())
    model = small_family_model(name)
    pixel_values = torch.randn(1, 3, 40, 56).to(dtype)
    with torch.no_grad():
        expected = output_signature(name, model, pixel_values.float())  # what the cast gives, computed by hand
        with pytest.warns(UserWarning, match=rf"pixel_values are {dtype} and the model is torch.float32: cast to"):
            scores = output_signature(name, model, pixel_values)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once: the second call is silent
            again = output_signature(name, model, pixel_values)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, rtol=0, atol=0)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


BAD_PIXEL_VALUES = {
    "a list": ([torch.zeros(3, 32, 32)], r"must be a torch.Tensor \(batch, 3, height, width\), got list; stack"),
    "None": (None, r"must be a torch.Tensor \(batch, 3, height, width\), got NoneType"),
    "one image without its batch axis": (
        torch.zeros(3, 32, 32),
        r"must be \(batch, channels, height, width\), got shape \(3, 32, 32\) \(one image: add the batch axis",
    ),
    "one channel": (torch.zeros(1, 1, 32, 32), r"must have 3 channels, got shape \(1, 1, 32, 32\)"),
    "an empty batch": (torch.zeros(0, 3, 32, 32), r"pixel_values is empty: shape \(0, 3, 32, 32\)"),
    "an empty image": (torch.zeros(1, 3, 0, 32), r"pixel_values is empty: shape \(1, 3, 0, 32\)"),
    "uint8 pixels": (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), r"normalised floats, got dtype torch.uint8; \w+"),
    "bool pixels": (torch.zeros(1, 3, 32, 32, dtype=torch.bool), r"normalised floats, got dtype torch.bool"),
}


@pytest.mark.parametrize("case", list(BAD_PIXEL_VALUES))
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_pixel_values_no_model_can_take_are_refused_naming_the_problem(name, case):
    pixel_values, message = BAD_PIXEL_VALUES[case]
    with pytest.raises(ValueError, match=message), torch.no_grad():
        small_family_model(name)(pixel_values)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_mistyped_local_folder_is_named_with_the_closest_saved_one(name, tmp_path, monkeypatch):
    """Was transformers' "Repo id must be in the form 'repo_name' or 'namespace/repo_name'" from the family's
    classes' `from_pretrained`: they now say what the package's commands say."""
    family = FAMILIES[name]
    preset, _ = SMALL[name]
    folder = tmp_path / "outputs" / "demo"
    small_family_model(name).config.save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    processor_class = type(family.preset_image_processor(preset))
    for cls in (family.config_class, family.head_class, processor_class):
        with pytest.raises(FileNotFoundError, match=r"^model not found: there is no folder \./outputs/dmeo \(did you "
                           r"mean outputs/demo\?\)$"):  # fmt: skip
            cls.from_pretrained("./outputs/dmeo")
        with pytest.raises(FileNotFoundError, match=r"^model not found: there is no folder runs/a/b/model$"):
            cls.from_pretrained("runs/a/b/model")  # no Hub id has two slashes
    assert family.config_class.from_pretrained("./outputs/demo").model_type == family.model_type


@pytest.mark.parametrize("name", PIXEL_CLASS_FAMILIES)
def test_a_test_time_scale_that_makes_a_one_pixel_view_predicts(name):
    """`fapn-predict photo.png --scales 0.01` (and `FaPNImageProcessor(size={"height": 1, "width": 1})`): was a torch
    INTERNAL ASSERT inside the uint8 antialiased resize of the processor."""
    preset, _ = SMALL[name]
    processor = FAMILIES[name].preset_image_processor(preset, ["a", "b", "c"])
    predictor = SegmentationPredictor(small_family_model(name), processor)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        prediction = predictor.predict(image, TTAConfig(scales=(0.001,)))  # 512 x 683 (640 x 853) -> 1 x 1
    assert prediction.shape == (48, 64) and len(np.unique(prediction)) == 1  # one pixel seen: one class everywhere


BAD_SEMANTIC_LABELS = {
    "NumPy labels": (np.zeros((1, 32, 32), np.int64), r"labels must be a torch\.Tensor of class ids .*got ndarray"),
    "list labels": ([[[0] * 32] * 32], r"labels must be a torch\.Tensor of class ids .*got list"),
    "float labels": (torch.zeros(1, 32, 32), r"labels must hold integer class ids, got dtype torch.float32"),
    "labels of another size": (
        torch.zeros(1, 16, 16, dtype=torch.long),
        r"labels must have shape \(batch, height, width\) = \(1, 32, 32\), got \(1, 16, 16\)",
    ),
    "a class id beyond": (
        torch.full((1, 32, 32), 3),
        r"labels contain values \[3\] \(1024 pixels\).*\[0, 3\) or the ignore index 255\. If the data set marks",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SEMANTIC_LABELS))
@pytest.mark.parametrize("name", PIXEL_CLASS_FAMILIES)
def test_semantic_labels_are_checked_the_same_way_by_every_family(name, case):
    """One kernel check (`fapn_layers.check_semantic_labels`) for FaPN's `labels` and MaskFormer + FaPN's semantic
    `labels=` (which it turns into mask targets)."""
    labels, message = BAD_SEMANTIC_LABELS[case]
    with pytest.raises(ValueError, match=message), torch.no_grad():
        small_family_model(name)(torch.zeros(1, 3, 32, 32), labels=labels)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_batch_norm_on_a_one_pixel_map_is_explained_in_every_family(name):
    """One 32 x 32 image in training: the backbone's stride-32 map is 1 x 1, and PyTorch's "Expected more than 1
    value per channel when training" comes out explained (`fapn_layers.explain_batch_norm_error`)."""
    preset, options = SMALL[name]
    model = FAMILIES[name].head_class(preset_config(preset, ["a", "b", "c"], **options)).train()
    with pytest.raises(ValueError, match=r"BatchNorm layer saw one value per channel .* batch of 1 image\(s\) of "
                       r"32x32 \(the stride-32 map is 1x1\): train with at least 2 images"):  # fmt: skip
        model(**training_inputs(name, torch.randn(1, 3, 32, 32)))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_backbone_at_other_strides_is_refused_in_every_family(name):
    """Four maps at strides 2..16 (timm's out_indices 0..3) passed the config's count of outputs, and MaskFormer +
    FaPN ran on them, aligning the wrong levels; both families now check the strides (`check_feature_strides`)."""
    preset, options = SMALL[name]
    config = preset_config(preset, ["a", "b", "c"], **options)
    config.backbone_config = TimmBackboneConfig(backbone="resnet18", out_indices=(0, 1, 2, 3))
    model = FAMILIES[name].head_class(config).eval()
    with pytest.raises(ValueError, match=r"feature maps are \[\(32, 32\), \(16, 16\), \(8, 8\), \(4, 4\)\] for a "
                       r"64x64 input; the FaPN neck needs 4 maps at strides 4, 8, 16, 32 .*out_indices"):  # fmt: skip
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
