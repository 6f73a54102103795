"""The FaPN detectors (issue 20): detectron2's semantics where torchvision differs (anchors, ROIAlignV2, background
last, losses, post-processing), every meta-architecture in training and evaluation, initialisation, saving and
loading, remote code, and the input checks. Models are tiny (8..40-channel ResNet, D = 32, few proposals)."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import roi_align
from transformers import ResNetConfig

from fapn_hf.modeling.configuration_fapn_rcnn import DETECTOR_STRIDES, FAPN_RCNN_CODE, FaPNRCNNConfig
from fapn_hf.modeling.modeling_fapn_rcnn import (
    FaPNRCNNForObjectDetection,
    FaPNRCNNModel,
    FixedStrideAnchorGenerator,
    ROIAlignV2Pooler,
)


def tiny_resnet() -> ResNetConfig:
    """A tiny MSRA-style transformers ResNet (stride in the 1x1 conv, as the converted detectron2 trunks)."""
    return ResNetConfig(
        embedding_size=8,
        hidden_sizes=[16, 24, 32, 40],
        depths=[1, 1, 1, 1],
        layer_type="bottleneck",
        downsample_in_bottleneck=True,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def tiny_rcnn_config(architecture: str = "mask_rcnn", **overrides: Any) -> FaPNRCNNConfig:
    """A detector of a few hundred thousand parameters: D = 32, 4 deformable groups, few proposals, and every
    proposal scored (threshold 0) so that a random model detects something. `architecture` chooses the
    meta-architecture and its label set (`meta_architecture=` in `overrides` replaces the first only)."""
    panoptic = architecture == "panoptic_fpn"
    settings = {
        "meta_architecture": architecture,
        "backbone_config": tiny_resnet(),
        "id2label": {i: name for i, name in enumerate(["cat", "dog", "car", "sky", "grass"][: 5 if panoptic else 3])},
        "num_thing_labels": 3,
        "fpn_dim": 32,
        "deformable_groups": 4,
        "box_head_fc_dim": 32,
        "mask_head_conv_dim": 16,
        "mask_head_num_conv": 2,
        "semantic_head_channels": 64,
        "rpn_pre_nms_topk_train": 100,
        "rpn_pre_nms_topk_test": 60,
        "rpn_post_nms_topk_train": 50,
        "rpn_post_nms_topk_test": 30,
        "rpn_batch_size_per_image": 64,
        "roi_batch_size_per_image": 32,
        "detections_per_image": 12,
        "box_score_threshold": 0.0,
    }
    return FaPNRCNNConfig(**{**settings, **overrides})


IMAGE_SIZES = torch.tensor([[64, 96], [50, 70]])


def make_labels(config: FaPNRCNNConfig, sizes: torch.Tensor = IMAGE_SIZES) -> list[dict[str, torch.Tensor]]:
    """Two boxes per image with their masks (and a semantic map for Panoptic FPN), plus a crowd box."""
    labels = []
    for height, width in sizes.tolist():
        boxes = torch.tensor([[4.0, 6.0, 40.0, 30.0], [20.0, 18.0, 60.0, 48.0], [0.0, 0.0, 10.0, 10.0]])
        label = {"boxes": boxes, "class_labels": torch.tensor([0, 2, 1]), "iscrowd": torch.tensor([0, 0, 1])}
        if config.has_masks:
            masks = torch.zeros(3, height, width, dtype=torch.bool)
            for index, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                masks[index, y0:y1, x0:x1] = True
            label["masks"] = masks
        if config.meta_architecture == "panoptic_fpn":
            generator = torch.Generator().manual_seed(height * width)  # the same labels on every call
            semantic = torch.randint(1, config.num_semantic_labels, (height, width), generator=generator)
            semantic[masks.any(0)] = 0
            semantic[:3] = 255
            label["semantic_labels"] = semantic
        labels.append(label)
    return labels


@pytest.fixture(scope="module")
def pixel_values() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 96)


# ---------------------------------------------------------------------------------------------------------------------
# detectron2's semantics
# ---------------------------------------------------------------------------------------------------------------------


def test_anchors_match_a_brute_force_of_detectron2s_rule_at_800x1216_with_p6_on_stride_64():
    """SPEC 6.2: cell anchors w = sqrt(size^2 / r), h = r * w, not rounded; centres at multiples of the level's
    stride (4..64). At 800x1216 the padded p6 is 13x19: torchvision would infer its stride as (800 // 13, 1216 // 19)
    = (61, 64) and round the cell anchors."""
    height, width = 800, 1216
    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    grids = [(math.ceil(height / s), math.ceil(width / s)) for s in DETECTOR_STRIDES[:4]]
    grids.append(((grids[-1][0] - 1) // 2 + 1, (grids[-1][1] - 1) // 2 + 1))  # max_pool2d(k=1, s=2) of p5
    assert grids[-1] == (13, 19)
    features = [torch.zeros(1, 1, h, w) for h, w in grids]
    images = ImageList(torch.zeros(1, 3, height, width), [(height, width)])
    anchors = FixedStrideAnchorGenerator(sizes, ratios, DETECTOR_STRIDES)(images, features)[0]

    expected = []
    for (grid_h, grid_w), stride, size in zip(grids, DETECTOR_STRIDES, sizes):
        cells = []
        for ratio in ratios:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            cells.append([-w / 2, -h / 2, w / 2, h / 2])
        ys, xs = np.meshgrid(np.arange(grid_h) * stride, np.arange(grid_w) * stride, indexing="ij")
        centres = np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4)  # row-major locations, then the cells
        expected.append((centres + np.array(cells)[None]).reshape(-1, 4))
    expected = torch.from_numpy(np.concatenate(expected))
    assert anchors.shape == expected.shape
    torch.testing.assert_close(anchors.double(), expected, rtol=0, atol=1e-4)
    # The last p6 anchor sits at (18 * 64, 12 * 64); torchvision's generator puts it elsewhere, and rounds.
    stock = AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * 5)(images, features)[0]
    assert (stock[-3:] - anchors[-3:]).abs().max() > 30
    assert not torch.equal(stock[:3], anchors[:3])  # 22.627 vs 23: rounded


def test_roi_pooler_is_roialign_v2_with_detectron2s_level_assignment():
    """Each box is pooled with roi_align(aligned=True, sampling_ratio=0) from level floor(4 + log2(sqrt(area) / 224
    + 1e-8)) clamped to [2, 5], at that level's stride, in the order the boxes were given."""
    torch.manual_seed(0)
    strides = (4, 8, 16, 32)
    features = {f"p{i + 2}": torch.randn(2, 3, 256 // s, 320 // s) for i, s in enumerate(strides)}
    boxes = [
        torch.tensor([[0.0, 0.0, 20.0, 10.0], [10.0, 5.0, 250.0, 200.0]]),
        torch.tensor([[30.5, 40.25, 130.0, 150.0], [1.0, 2.0, 300.0, 255.0], [5.0, 5.0, 117.0, 117.0]]),
    ]
    pooler = ROIAlignV2Pooler(list(features), 5, strides)
    pooled = pooler(features, boxes, [(256, 320)] * 2)
    index = 0
    for image, image_boxes in enumerate(boxes):
        for box in image_boxes:
            size = math.sqrt(float((box[2] - box[0]) * (box[3] - box[1])))
            level = min(max(math.floor(4 + math.log2(size / 224 + 1e-8)), 2), 5)
            feature = features[f"p{level}"][image : image + 1]
            roi = torch.cat([torch.zeros(1), box])[None]
            expected = roi_align(feature, roi, 5, spatial_scale=1 / 2**level, sampling_ratio=0, aligned=True)
            torch.testing.assert_close(pooled[index : index + 1], expected)
            unaligned = roi_align(feature, roi, 5, spatial_scale=1 / 2**level, sampling_ratio=2, aligned=False)
            assert not torch.allclose(pooled[index : index + 1], unaligned)
            index += 1
    assert {int(v) for v in pooler.assign_levels(torch.cat(boxes))} == {0, 1, 2}  # several levels exercised


def test_box_predictor_decodes_with_background_last():
    """The last of the K + 1 class logits is background: a proposal whose background logit wins gives no detection
    (score < 0.05), the others their own class (0-based) with the proposal's box (zero deltas), sorted by score."""
    config = tiny_rcnn_config("faster_rcnn", box_score_threshold=0.05)
    heads = FaPNRCNNForObjectDetection(config).eval().roi_heads
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 30.0, 20.0], [40.0, 10.0, 60.0, 40.0]])]
    logits = torch.tensor([[0.0, 0.0, 0.0, 12.0], [9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 11.0, 0.0]])
    deltas = torch.zeros(3, 4 * 3)
    heads.box_outputs = lambda features, boxes, shapes: (logits, deltas)
    result = heads.detections({}, proposals, [(64, 96)])[0]
    assert result["labels"].tolist() == [2, 0]
    torch.testing.assert_close(result["boxes"], proposals[0][[2, 1]])
    torch.testing.assert_close(result["scores"], torch.softmax(logits, -1)[[2, 1], [2, 0]])
    assert heads.box_predictor.cls_score.out_features == 4 and heads.box_predictor.bbox_pred.out_features == 12


def test_rpn_keeps_tiny_boxes_that_torchvision_would_drop():
    """detectron2 drops only empty boxes: a 0.0005-px wide proposal survives (torchvision's min_size is 1e-3)."""
    rpn = FaPNRCNNForObjectDetection(tiny_rcnn_config("faster_rcnn")).eval().rpn
    proposals = torch.tensor([[[0.0, 0.0, 0.0005, 10.0], [5.0, 5.0, 5.0, 9.0], [1.0, 1.0, 8.0, float("nan")]]])
    boxes, scores = rpn.filter_proposals(proposals, torch.tensor([[2.0], [1.0], [3.0]]), [(64, 96)], [3])
    torch.testing.assert_close(boxes[0], proposals[0, :1])  # the empty and the non-finite box are dropped
    assert scores[0].tolist() == [2.0]  # logits, not probabilities


def test_losses_follow_detectron2s_normalisers():
    """RPN: BCE and L1 sums over the sampled anchors divided by 256 x images (not by the number sampled); Fast
    R-CNN: cross-entropy mean and L1 sum over the sampled ROIs' foreground divided by the number of sampled ROIs."""
    rpn = FaPNRCNNForObjectDetection(tiny_rcnn_config("faster_rcnn")).rpn
    torch.manual_seed(0)
    labels = [torch.tensor([1.0, 0.0, -1.0, 0.0]), torch.tensor([0.0, 1.0, 1.0, -1.0])]
    objectness, deltas = torch.randn(8, 1), torch.randn(8, 4)
    targets = [torch.randn(4, 4), torch.randn(4, 4)]
    loss_cls, loss_loc = rpn.compute_loss(objectness, deltas, labels, targets)
    flat_labels, flat_targets = torch.cat(labels), torch.cat(targets)
    sampled, positive = flat_labels >= 0, flat_labels == 1
    expected_cls = sum(
        -(t * math.log(1 / (1 + math.exp(-o))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-o))))
        for o, t in zip(objectness[sampled, 0].tolist(), flat_labels[sampled].tolist())
    ) / (64 * 2)
    expected_loc = (deltas[positive] - flat_targets[positive]).abs().sum() / (64 * 2)
    torch.testing.assert_close(loss_cls, torch.tensor(expected_cls, dtype=torch.float32))
    torch.testing.assert_close(loss_loc, expected_loc)


# ---------------------------------------------------------------------------------------------------------------------
# Every meta-architecture, training and evaluation
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("meta_architecture", ["faster_rcnn", "mask_rcnn", "panoptic_fpn"])
def test_forward_in_training_and_evaluation_with_and_without_labels(meta_architecture, pixel_values):
    torch.manual_seed(0)
    config = tiny_rcnn_config(meta_architecture)
    model = FaPNRCNNForObjectDetection(config)
    labels = make_labels(config)

    model.train()
    outputs = model(pixel_values, IMAGE_SIZES, labels)
    expected_losses = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    expected_losses |= {"loss_mask"} if config.has_masks else set()
    expected_losses |= {"loss_sem_seg"} if meta_architecture == "panoptic_fpn" else set()
    assert set(outputs.loss_dict) == expected_losses
    torch.testing.assert_close(outputs.loss, sum(outputs.loss_dict.values()))
    assert torch.isfinite(outputs.loss)
    outputs.loss.backward()
    for name in ("rpn.head.cls_logits.weight", "roi_heads.box_predictor.cls_score.weight", "model.neck"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
    assert outputs.num_detections.tolist() == [0, 0]  # training computes losses only
    with pytest.raises(ValueError, match="labels are needed in training mode"):
        model(pixel_values, IMAGE_SIZES)

    model.eval()
    with torch.no_grad():
        plain = model(pixel_values, IMAGE_SIZES)
        torch.manual_seed(123)
        with_labels = model(pixel_values, IMAGE_SIZES, labels)
    assert plain.loss is None and torch.isfinite(with_labels.loss)
    # The evaluation loss samples from its own seeded generator: reproducible, and the caller's stream untouched.
    torch.manual_seed(5)
    with torch.no_grad():
        again = model(pixel_values, IMAGE_SIZES, labels)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))
    assert torch.equal(again.loss, with_labels.loss)
    # The ROI sampling of the loss does not touch the detections.
    for key in ("pred_boxes", "scores", "pred_labels", "num_detections", "pred_masks", "semantic_logits"):
        first, second = getattr(plain, key), getattr(with_labels, key)
        assert (first is None) == (second is None), key
        if first is not None:
            assert torch.equal(first, second), key

    k = config.detections_per_image
    assert plain.pred_boxes.shape == (2, k, 4) and plain.scores.shape == (2, k) and plain.pred_labels.shape == (2, k)
    assert plain.num_detections.tolist() == [k, k]  # threshold 0: a random model fills the list
    assert torch.equal(plain.image_sizes, IMAGE_SIZES)
    for image, (height, width) in enumerate(IMAGE_SIZES.tolist()):
        boxes = plain.pred_boxes[image]
        assert (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all() and (boxes >= 0).all()
        assert (plain.scores[image][:-1] >= plain.scores[image][1:]).all()
        assert ((plain.pred_labels[image] >= 0) & (plain.pred_labels[image] < 3)).all()
    if config.has_masks:
        assert plain.pred_masks.shape == (2, k, 28, 28)
        assert ((plain.pred_masks > 0) & (plain.pred_masks < 1)).all()
    else:
        assert plain.pred_masks is None
    if meta_architecture == "panoptic_fpn":
        assert plain.semantic_logits.shape == (2, 3, 16, 24)  # 1 "things" + 2 stuff channels, stride 4
    else:
        assert plain.semantic_logits is None


def test_detections_are_padded_and_the_second_image_is_clipped_to_its_size(pixel_values):
    """A score threshold that few detections pass: entries past num_detections are 0 / 0 / -1."""
    torch.manual_seed(1)
    model = FaPNRCNNForObjectDetection(tiny_rcnn_config("faster_rcnn", box_score_threshold=0.34)).eval()
    with torch.no_grad():
        outputs = model(pixel_values, IMAGE_SIZES)
    for image in range(2):
        count = int(outputs.num_detections[image])
        assert count < model.config.detections_per_image
        assert (outputs.scores[image, :count] > 0.34).all()
        assert (outputs.pred_boxes[image, count:] == 0).all() and (outputs.scores[image, count:] == 0).all()
        assert (outputs.pred_labels[image, count:] == -1).all()


def test_the_fpn_switch_changes_only_the_neck():
    """use_fam=False, use_fsm=False is detectron2's FPN: every parameter outside the neck keeps its name and shape;
    with FAM the top level has no 3x3 output conv."""
    fapn = FaPNRCNNForObjectDetection(tiny_rcnn_config("panoptic_fpn")).state_dict()
    fpn = FaPNRCNNForObjectDetection(tiny_rcnn_config("panoptic_fpn", use_fam=False, use_fsm=False)).state_dict()
    outside = {k: tuple(v.shape) for k, v in fapn.items() if not k.startswith("model.neck.")}
    assert outside == {k: tuple(v.shape) for k, v in fpn.items() if not k.startswith("model.neck.")}
    assert {k for k in fapn if k.startswith("model.neck.")} != {k for k in fpn if k.startswith("model.neck.")}
    assert any(k.startswith("model.neck.top_output_conv") for k in fpn)
    assert not any(k.startswith("model.neck.top_output_conv") for k in fapn)


def test_p6_is_p5_subsampled(pixel_values):
    model = FaPNRCNNModel(tiny_rcnn_config("faster_rcnn")).eval()
    with torch.no_grad():
        pyramid = model(pixel_values).feature_maps
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    torch.testing.assert_close(pyramid[4], pyramid[3][:, :, ::2, ::2])


# ---------------------------------------------------------------------------------------------------------------------
# Initialisation, saving, loading
# ---------------------------------------------------------------------------------------------------------------------


def _check_detectron2_init(model: FaPNRCNNForObjectDetection) -> None:
    """detectron2's initialisation, checked on the statistics of each layer's weights (biases 0)."""

    def std(tensor):
        return float(tensor.detach().float().std())

    rpn = model.rpn.head
    for conv in (rpn.conv[0][0], rpn.cls_logits, rpn.bbox_pred):
        assert std(conv.weight) == pytest.approx(0.01, rel=0.15) and not conv.bias.any()
    predictor = model.roi_heads.box_predictor
    assert std(predictor.cls_score.weight) == pytest.approx(0.01, rel=0.15) and not predictor.cls_score.bias.any()
    assert std(predictor.bbox_pred.weight) == pytest.approx(0.001, rel=0.15) and not predictor.bbox_pred.bias.any()
    for fc in (model.roi_heads.box_head.fc6, model.roi_heads.box_head.fc7):
        bound = math.sqrt(3 / fc.weight.shape[1])  # c2_xavier_fill: kaiming_uniform(a=1)
        assert fc.weight.abs().max() <= bound and fc.weight.abs().max() > 0.9 * bound and not fc.bias.any()
    mask_convs = [m for m in model.roi_heads.mask_head.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in [*mask_convs, model.roi_heads.mask_predictor.conv5_mask]:
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()  # torch's fan_out (ConvTranspose: in_channels)
        assert std(conv.weight) == pytest.approx(math.sqrt(2 / fan_out), rel=0.15) and not conv.bias.any()
    logits = model.roi_heads.mask_predictor.mask_fcn_logits
    assert std(logits.weight) == pytest.approx(0.001, rel=0.2) and not logits.bias.any()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fresh_weights_are_initialised_as_detectron2_does():
    torch.manual_seed(0)
    config = tiny_rcnn_config("mask_rcnn", fpn_dim=64, deformable_groups=8, box_head_fc_dim=256, mask_head_conv_dim=64)
    _check_detectron2_init(FaPNRCNNForObjectDetection(config))


def test_save_load_round_trip_and_reheaded_predictors(tmp_path, pixel_values):
    torch.manual_seed(0)
    config = tiny_rcnn_config("mask_rcnn", fpn_dim=64, deformable_groups=8, box_head_fc_dim=256, mask_head_conv_dim=64)
    model = FaPNRCNNForObjectDetection(config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = FaPNRCNNForObjectDetection.from_pretrained(tmp_path).eval()
    settings = [name for name in FaPNRCNNConfig.__annotations__ if name != "backbone_config"] + ["id2label"]
    assert {k: getattr(loaded.config, k) for k in settings} == {k: getattr(model.config, k) for k in settings}
    with torch.no_grad():
        expected, actual = model(pixel_values, IMAGE_SIZES), loaded(pixel_values, IMAGE_SIZES)
    for key in ("pred_boxes", "scores", "pred_labels", "pred_masks"):
        assert torch.equal(getattr(expected, key), getattr(actual, key)), key

    # New thing classes: the predictors are re-created (initialised as fresh ones), the rest is loaded.
    reheaded = FaPNRCNNForObjectDetection.from_pretrained(tmp_path, num_labels=7, ignore_mismatched_sizes=True)
    assert reheaded.config.num_thing_labels == 7
    assert reheaded.roi_heads.box_predictor.cls_score.out_features == 8
    _check_detectron2_init(reheaded)
    torch.testing.assert_close(reheaded.roi_heads.box_head.fc6.weight, model.roi_heads.box_head.fc6.weight)


def test_a_checkpoint_without_backbone_weights_loads_finite(tmp_path, pixel_values):
    for backbone in (tiny_resnet(), None):
        overrides = {} if backbone is not None else {"backbone_config": None, "backbone": "test_resnet"}
        model = FaPNRCNNForObjectDetection(tiny_rcnn_config("faster_rcnn", **overrides))
        folder = tmp_path / ("resnet" if backbone is not None else "timm")
        model.save_pretrained(folder)
        state = load_file(str(folder / "model.safetensors"))
        save_file(
            {k: v for k, v in state.items() if not k.startswith("model.backbone.")}, str(folder / "model.safetensors")
        )
        loaded = FaPNRCNNForObjectDetection.from_pretrained(folder).eval()
        assert all(torch.isfinite(t).all() for t in loaded.state_dict().values())
        with torch.no_grad():
            assert torch.isfinite(loaded(pixel_values).pred_boxes).all()


def test_backbone_freezing_as_detectron2(pixel_values):
    """freeze_backbone_norm + freeze_backbone_stages=2 (the paper models' FrozenBN, FREEZE_AT 2): the stem and res2
    get no gradient and the BatchNorms stay in inference mode under train()."""
    model = FaPNRCNNForObjectDetection(
        tiny_rcnn_config("faster_rcnn", freeze_backbone_norm=True, freeze_backbone_stages=2)
    ).train()
    backbone = model.model.backbone
    assert not any(p.requires_grad for p in backbone.embedder.parameters())
    assert not any(p.requires_grad for p in backbone.encoder.stages[0].parameters())
    assert any(p.requires_grad for p in backbone.encoder.stages[1].parameters())
    assert not any(m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))


def _register() -> None:
    """Registers the family's classes (the processor too once its module exists), as `import fapn_hf` will."""
    from fapn_hf.modeling.remote_code import register_family

    try:
        register_family(FAPN_RCNN_CODE, "fapn_hf.modeling")
    except ModuleNotFoundError:  # the processor is written separately: register the config and the models alone
        transformers.AutoConfig.register("fapn_rcnn", FaPNRCNNConfig, exist_ok=True)
        FaPNRCNNConfig.register_for_auto_class()
        for auto_class, name in FAPN_RCNN_CODE.models.items():
            model_class = {"FaPNRCNNModel": FaPNRCNNModel}.get(name.split(".")[1], FaPNRCNNForObjectDetection)
            getattr(transformers, auto_class).register(FaPNRCNNConfig, model_class, exist_ok=True)
        FaPNRCNNModel.register_for_auto_class("AutoModel")
        FaPNRCNNForObjectDetection.register_for_auto_class("AutoModelForObjectDetection")


def test_auto_classes_load_the_detector(tmp_path):
    _register()
    model = FaPNRCNNForObjectDetection(tiny_rcnn_config("panoptic_fpn"))
    model.save_pretrained(tmp_path)
    auto_map = transformers.AutoConfig.from_pretrained(tmp_path).auto_map
    for auto_class in ("AutoModelForObjectDetection", "AutoModelForInstanceSegmentation",
                       "AutoModelForUniversalSegmentation", "AutoModelForImageSegmentation"):  # fmt: skip
        assert auto_map[auto_class] == "modeling_fapn_rcnn.FaPNRCNNForObjectDetection"
        assert type(getattr(transformers, auto_class).from_pretrained(tmp_path)) is FaPNRCNNForObjectDetection
    assert type(transformers.AutoModel.from_pretrained(tmp_path)) is FaPNRCNNModel


# The saved folder's own code without fapn_hf: tests/test_remote_code_closure.py (every family, this Panoptic FPN).


# ---------------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def panoptic_model() -> FaPNRCNNForObjectDetection:
    return FaPNRCNNForObjectDetection(tiny_rcnn_config("panoptic_fpn")).eval()


def _broken(config: FaPNRCNNConfig, change) -> list[dict]:
    labels = make_labels(config)
    change(labels[1])
    return labels


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda label: label.pop("masks"), r"labels\[1\] lacks \['masks'\]"),
        (lambda label: label.pop("semantic_labels"), r"lacks \['semantic_labels'\]"),
        (lambda label: label.update(boxes=label["boxes"][:, :3]), r"\['boxes'\] must be a float \(num_boxes, 4\)"),
        (lambda label: label.update(boxes=label["boxes"].long()), r"must be a float \(num_boxes, 4\)"),
        (lambda label: label.update(class_labels=torch.tensor([0, 3, 1])), r"class_labels'\] contain values \[3\]"),
        (lambda label: label.update(class_labels=torch.tensor([0.0, 1.0, 1.0])), r"integer class ids"),
        (lambda label: label.update(masks=label["masks"][:, :10]), r"must be \(3, 50, 70\): one mask per box"),
        (lambda label: label.update(semantic_labels=torch.full((50, 70), 7)), r"semantic_labels'\] contain values"),
        (lambda label: label.update(iscrowd=torch.tensor([0, 1])), r"iscrowd'\] must be \(3,\)"),
    ],
)  # fmt: skip
def test_bad_labels_are_refused_naming_the_problem(panoptic_model, pixel_values, change, message):
    with pytest.raises(ValueError, match=message):
        panoptic_model(pixel_values, IMAGE_SIZES, _broken(panoptic_model.config, change))


def test_bad_inputs_are_refused_naming_the_problem(panoptic_model, pixel_values):
    labels = make_labels(panoptic_model.config)
    with pytest.raises(ValueError, match=r"labels must be a list with one dict per image \(2\), got dict"):
        panoptic_model(pixel_values, IMAGE_SIZES, labels[0])
    with pytest.raises(ValueError, match=r"one dict per image \(2\), got 1"):
        panoptic_model(pixel_values, IMAGE_SIZES, labels[:1])
    with pytest.raises(ValueError, match=r"image_sizes\[1\] = \(50, 100\) must lie inside pixel_values' 64x96"):
        panoptic_model(pixel_values, torch.tensor([[64, 96], [50, 100]]))
    with pytest.raises(ValueError, match=r"image_sizes must be a \(2, 2\) integer tensor"):
        panoptic_model(pixel_values, torch.tensor([[64.0, 96.0], [50.0, 70.0]]))
    with pytest.raises(ValueError, match="pixel_values must be normalised floats"):
        panoptic_model(pixel_values.to(torch.uint8))
    with pytest.raises(ValueError, match="pixel_values must be"):
        panoptic_model(pixel_values[0])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"meta_architecture": "retinanet"}, "meta_architecture must be one of"),
        ({"meta_architecture": "mask_rcnn"}, r"mask_rcnn has no stuff classes: num_thing_labels \(3\) must equal"),
        ({"num_thing_labels": 6}, r"num_thing_labels must lie in \[1, num_labels=5\]"),
        ({"anchor_sizes": [32, 64, 128]}, "anchor_sizes must be a list of 5 numbers"),
        ({"rpn_iou_thresholds": [0.7, 0.3]}, "rpn_iou_thresholds must satisfy"),
        ({"box_score_threshold": 1.5}, r"box_score_threshold must lie in \[0, 1\]"),
        ({"fpn_dim": "256"}, "fpn_dim must be int"),
        ({"semantic_loss_ignore_index": 2}, "semantic_loss_ignore_index"),
        ({"deformable_groups": 5}, r"fpn_dim \(32\) must be divisible by deformable_groups \(5\)"),
    ],
)
def test_bad_configs_are_refused_naming_the_setting(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_rcnn_config("panoptic_fpn", **overrides)


def test_config_round_trip_keeps_every_setting(tmp_path):
    config = tiny_rcnn_config("panoptic_fpn", anchor_sizes=[16, 32, 64, 128, 256])
    config.save_pretrained(tmp_path)
    reloaded = FaPNRCNNConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert reloaded.num_thing_labels == 3 and reloaded.num_semantic_labels == 3
    assert copy.deepcopy(reloaded).anchor_sizes == [16.0, 32.0, 64.0, 128.0, 256.0]
