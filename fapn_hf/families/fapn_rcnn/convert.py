"""The detectors' conversion (SPEC 6): detectron2's `GeneralizedRCNN` (Faster / Mask R-CNN) and `PanopticFPN` with the
authors' FaPN backbone (`build_resnet_fan_backbone`) or detectron2's own FPN (the model-zoo baselines, `.pkl`), into
`FaPNRCNNForObjectDetection` folders.

    fapn-convert --checkpoint model_final.pth --model mask-rcnn-fapn-r50-coco --output_dir mask-rcnn-fapn-r50

Renaming is all it takes: the trunk becomes transformers' MSRA `ResNetConfig` (FrozenBN -> BatchNorm with a zero
`num_batches_tracked`), the neck the kernel's `FaPNNeck`, the heads torchvision's parts (`rpn.head`, `box_head.fc6/fc7`,
`mask_head`, `mask_predictor`) and the semantic FPN head. The stem stays BGR: the processor feeds BGR 0..255 minus
`PIXEL_MEAN` exactly as detectron2 (`channel_order="BGR"`, no rescale).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from ...convert import (
    Checkpoint,
    CheckpointError,
    Converter,
    OriginalModel,
    RenameTable,
    ReportedResult,
    detectron2_resnet_to_transformers,
    feature_alignment_renames,
    pixel_statistic,
)
from ...labels import COCO_STUFF_LABELS, label_maps
from ...modeling.configuration_fapn_rcnn import FaPNRCNNConfig
from ...modeling.image_processing_fapn_rcnn import FaPNRCNNImageProcessor
from ...modeling.modeling_fapn_rcnn import FaPNRCNNForObjectDetection

_NECK = "model.neck"
RCNN_RENAMES = RenameTable.of(
    [
        # MSRA ResNet (stride in the 1x1 conv, FrozenBN) -> transformers ResNetBackbone(downsample_in_bottleneck).
        *detectron2_resnet_to_transformers("backbone.bottom_up", "model.backbone"),
        # FaPN (FAN): fan_align5 is P5's 1x1 lateral; fan_align2..4 are FSM + FAM; fpn_output2..4 the 3x3 outputs.
        ("backbone.fan_align5.{param}", f"{_NECK}.top_lateral_conv.conv.{{param}}"),
        (
            "backbone.fan_align{finer}.lateral_conv.conv_atten.weight",
            f"{_NECK}.lateral_convs.{{finer-2}}.attention.conv.weight",
        ),
        (
            "backbone.fan_align{finer}.lateral_conv.conv.weight",
            f"{_NECK}.lateral_convs.{{finer-2}}.projection.conv.weight",
        ),
        *feature_alignment_renames("backbone.fan_align{finer}", f"{_NECK}.alignments.{{finer-2}}"),
        ("backbone.fpn_output{finer}.{param}", f"{_NECK}.output_convs.{{finer-2}}.conv.{{param}}"),
        # detectron2's FPN: laterals on every level, an output conv on P5 too.
        ("backbone.fpn_lateral{finer}.{param}", f"{_NECK}.lateral_convs.{{finer-2}}.conv.{{param}}"),
        ("backbone.fpn_lateral5.{param}", f"{_NECK}.top_lateral_conv.conv.{{param}}"),
        ("backbone.fpn_output5.{param}", f"{_NECK}.top_output_conv.conv.{{param}}"),
        # StandardRPNHead -> torchvision's RPNHead.
        ("proposal_generator.rpn_head.conv.{param}", "rpn.head.conv.0.0.{param}"),
        ("proposal_generator.rpn_head.objectness_logits.{param}", "rpn.head.cls_logits.{param}"),
        ("proposal_generator.rpn_head.anchor_deltas.{param}", "rpn.head.bbox_pred.{param}"),
        # FastRCNNConvFCHead -> TwoMLPHead; the predictor keeps its names (background last in both).
        ("roi_heads.box_head.fc1.{param}", "roi_heads.box_head.fc6.{param}"),
        ("roi_heads.box_head.fc2.{param}", "roi_heads.box_head.fc7.{param}"),
        ("roi_heads.box_predictor.cls_score.{param}", "roi_heads.box_predictor.cls_score.{param}"),
        ("roi_heads.box_predictor.bbox_pred.{param}", "roi_heads.box_predictor.bbox_pred.{param}"),
        # MaskRCNNConvUpsampleHead -> MaskRCNNHeads + MaskRCNNPredictor.
        ("roi_heads.mask_head.mask_fcn{conv}.{param}", "roi_heads.mask_head.{conv-1}.0.{param}"),
        ("roi_heads.mask_head.deconv.{param}", "roi_heads.mask_predictor.conv5_mask.{param}"),
        ("roi_heads.mask_head.predictor.{param}", "roi_heads.mask_predictor.mask_fcn_logits.{param}"),
        # Panoptic FPN's SemSegFPNHead: p{level}.{2k} is conv k (odd indices are parameter-free upsamples).
        ("sem_seg_head.p{level}.{layer}.weight", "semantic_head.scale_heads.{level-2}.{layer/2}.conv.weight"),
        ("sem_seg_head.p{level}.{layer}.norm.{param}", "semantic_head.scale_heads.{level-2}.{layer/2}.norm.{param}"),
        ("sem_seg_head.predictor.{param}", "semantic_head.predictor.conv.{param}"),
    ],
    patterns={"finer": r"[234]"},  # the levels below P5 (P5 has rules of its own)
)

RESNET_DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
DETECTRON2_PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
DETECTRON2_PIXEL_STD_BGR = (1.0, 1.0, 1.0)
META_ARCHITECTURES = ("faster_rcnn", "mask_rcnn", "panoptic_fpn")

# COCO's 80 thing classes (the first 80 of COCO-Stuff, in category-id order) and the 53 stuff classes of COCO panoptic
# (detectron2's `COCO_CATEGORIES` with isthing 0, in id order): the contiguous ids detectron2 trains with.
COCO_THING_LABELS: tuple[str, ...] = tuple(COCO_STUFF_LABELS[:80])
COCO_PANOPTIC_STUFF_LABELS: tuple[str, ...] = (
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood", "flower", "fruit",
    "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform", "playingfield", "railroad", "river",
    "road", "roof", "sand", "sea", "shelf", "snow", "stairs", "tent", "towel", "wall-brick", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "window-blind", "window-other", "tree-merged", "fence-merged",
    "ceiling-merged", "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged", "pavement-merged",
    "mountain-merged", "grass-merged", "dirt-merged", "paper-merged", "food-other-merged", "building-other-merged",
    "rock-merged", "wall-other-merged", "rug-merged",
)  # fmt: skip
LABEL_SETS: dict[str, tuple[tuple[str, ...], int]] = {
    "coco": (COCO_THING_LABELS, 80),
    "coco_panoptic": (COCO_THING_LABELS + COCO_PANOPTIC_STUFF_LABELS, 80),
}


def _labels(model: OriginalModel) -> tuple[list[str], int]:
    """(all class names, things first; number of things). `settings["label_names"]` / `["num_thing_labels"]`
    override the named set (for checkpoints trained on other data)."""
    if "label_names" in model.settings:
        names = list(model.settings["label_names"])
        return names, int(model.settings.get("num_thing_labels", len(names)))
    if model.labels not in LABEL_SETS:
        raise CheckpointError(f"{model.name}: unknown label set {model.labels!r}; known: {sorted(LABEL_SETS)}")
    names, things = LABEL_SETS[model.labels]
    return list(names), things


def _rcnn_config(model: OriginalModel) -> FaPNRCNNConfig:
    """The package config of an original detector: detectron2's R50/R101-FPN defaults (SPEC 6.2), the MSRA trunk as a
    transformers ResNet, FaPN (norm "", 8 groups) or FPN. `settings` may narrow the widths (`embedding_size`,
    `hidden_sizes`, `fpn_dim`, `box_head_fc_dim`, `mask_head_conv_dim`, `semantic_head_channels`) for checkpoints
    of other sizes."""
    from transformers import ResNetConfig

    settings = model.settings
    names, things = _labels(model)
    id2label, label2id = label_maps(names)
    trunk = ResNetConfig(
        layer_type="bottleneck",
        embedding_size=settings.get("embedding_size", 64),
        hidden_sizes=list(settings.get("hidden_sizes", (256, 512, 1024, 2048))),
        depths=RESNET_DEPTHS[settings["depth"]],
        downsample_in_bottleneck=True,  # STRIDE_IN_1X1
        hidden_act="relu",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return FaPNRCNNConfig(
        meta_architecture=settings["meta_architecture"],
        backbone_config=trunk,
        use_fam=settings["fapn"],
        use_fsm=settings["fapn"],
        fpn_dim=settings.get("fpn_dim", 256),
        deformable_groups=8,
        neck_norm="",
        size_divisibility=32,
        freeze_backbone_norm=True,  # FrozenBN
        freeze_backbone_stages=2,  # detectron2's FREEZE_AT: 2
        num_thing_labels=things,
        id2label=id2label,
        label2id=label2id,
        box_head_fc_dim=settings.get("box_head_fc_dim", 1024),
        mask_head_conv_dim=settings.get("mask_head_conv_dim", 256),
        semantic_head_channels=settings.get("semantic_head_channels", 128),
    )


def _rcnn_transform(
    tensors: dict[str, torch.Tensor], checkpoint: Checkpoint, model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """A zero `num_batches_tracked` for every FrozenBN turned BatchNorm (FrozenBN has none; in eval it is unused).
    The stem stays BGR: the processor feeds detectron2's channel order."""
    tensors = dict(tensors)
    for name in [n for n in tensors if n.endswith(".running_mean")]:
        tensors[name.removesuffix("running_mean") + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return tensors


def _rcnn_processor(model: OriginalModel, checkpoint: Checkpoint) -> FaPNRCNNImageProcessor:
    """detectron2's test input: BGR 0..255 minus PIXEL_MEAN over PIXEL_STD (from the checkpoint when it stores them),
    ResizeShortestEdge to the original MIN_SIZE_TEST / MAX_SIZE_TEST."""
    mean = pixel_statistic(checkpoint, "pixel_mean", DETECTRON2_PIXEL_MEAN_BGR, order="B, G, R")
    std = pixel_statistic(checkpoint, "pixel_std", DETECTRON2_PIXEL_STD_BGR, order="B, G, R")
    if min(std) <= 0:
        raise CheckpointError(f"{checkpoint.path}: pixel_std must be positive, got {std} (B, G, R)")
    _, things = _labels(model)
    return FaPNRCNNImageProcessor(
        channel_order="BGR",
        do_rescale=False,
        image_mean=mean,
        image_std=std,
        size={"shortest_edge": model.test_shortest_edge, "longest_edge": model.test_longest_edge},
        meta_architecture=model.settings["meta_architecture"],
        num_thing_labels=things,
    )


def _recognise_rcnn(keys: Sequence[str]) -> bool:
    # An MSRA trunk, an FPN or FaPN neck and the R-CNN heads.
    return (
        any(k.startswith("backbone.bottom_up.") for k in keys)
        and any(k.startswith(("backbone.fan_align", "backbone.fpn_lateral")) for k in keys)
        and any(k.startswith("roi_heads.") for k in keys)
        and any(k.startswith("proposal_generator.") for k in keys)
    )


def _describe(keys: Sequence[str]) -> tuple[str, bool, int | None, int]:
    """(meta architecture, FaPN neck, ResNet depth or None, res4 blocks) of a detector's keys."""
    if any(k.startswith("sem_seg_head.") for k in keys):
        meta = "panoptic_fpn"
    elif any(k.startswith("roi_heads.mask_head.") for k in keys):
        meta = "mask_rcnn"
    else:
        meta = "faster_rcnn"
    fapn = any(k.startswith("backbone.fan_align") for k in keys)
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"backbone\.bottom_up\.res4\.(\d+)\.", k))}
    depth = next((d for d, depths in RESNET_DEPTHS.items() if depths[2] == len(blocks)), None)
    return meta, fapn, depth, len(blocks)


def _check_rcnn(model: OriginalModel, checkpoint: Checkpoint) -> None:
    meta, fapn, depth, blocks = _describe(checkpoint.keys)
    wanted = (model.settings["meta_architecture"], model.settings["fapn"], model.settings["depth"])
    if (meta, fapn, depth) == wanted:
        return
    trunk = f"R{depth}" if depth else f"a ResNet with {blocks} res4 blocks"
    found = f"{meta} with the {'FaPN' if fapn else 'FPN'} neck on {trunk}"
    matching = [m.name for m in ORIGINAL_MODELS.values() if _key(m) == (meta, fapn, depth)]
    hint = f"; use --model {matching[0]}" if matching else ""
    raise CheckpointError(
        f"{checkpoint.path} is a detectron2 {found}, but {model.name} is {wanted[0]} with the "
        f"{'FaPN' if wanted[1] else 'FPN'} neck on R{wanted[2]}{hint}"
    )


def _key(model: OriginalModel) -> tuple[Any, Any, Any]:
    return model.settings["meta_architecture"], model.settings["fapn"], model.settings["depth"]


CONVERTER = Converter(
    name="detectron2 Faster/Mask R-CNN or Panoptic FPN with the FaPN (FAN) or FPN neck",
    renames=RCNN_RENAMES,
    recognise=_recognise_rcnn,
    build_config=_rcnn_config,
    build_model=FaPNRCNNForObjectDetection,
    transform=_rcnn_transform,
    processor_tensors=("pixel_mean", "pixel_std"),
    build_processor=_rcnn_processor,
    check=_check_rcnn,
    checkpoint_signatures=(
        (("roi_heads.", "proposal_generator."), "a detectron2 R-CNN model (Faster/Mask R-CNN or Panoptic FPN)"),
    ),
)

_AUTHORS_REPO = "https://github.com/EMI-Group/FaPN"
_MODEL_ZOO = "https://github.com/facebookresearch/detectron2/blob/main/MODEL_ZOO.md"
_ZOO_DOWNLOADS = "https://dl.fbaipublicfiles.com/detectron2"
_COCO_DETECTION = "--dataset /data/coco --split val2017"


def _coco(metric: str, value: float, authors: bool) -> ReportedResult:
    if authors:
        return ReportedResult("coco", "val2017", metric, value, "FaPN authors' model table", _AUTHORS_REPO)
    return ReportedResult("coco", "val2017", metric, value, "detectron2 model zoo", _MODEL_ZOO)


_NAMES = {"faster_rcnn": "faster-rcnn", "mask_rcnn": "mask-rcnn", "panoptic_fpn": "panoptic-fpn"}
_DESCRIPTIONS = {"faster_rcnn": "Faster R-CNN", "mask_rcnn": "Mask R-CNN", "panoptic_fpn": "Panoptic FPN"}
# (meta architecture, depth, schedule, authors' config, reported FaPN figures, detectron2 zoo path and FPN figures)
_RELEASES = (
    ("faster_rcnn", 50, "1x", "COCO-Detection/faster_rcnn_R_50_FAN_1x.yaml", (("box_ap", 39.2),),
     "COCO-Detection/faster_rcnn_R_50_FPN_1x/137257794/model_final_b275ba.pkl", (("box_ap", 37.9),)),
    ("faster_rcnn", 101, "3x", "COCO-Detection/faster_rcnn_R_101_FAN_3x.yaml", (("box_ap", 42.8),),
     "COCO-Detection/faster_rcnn_R_101_FPN_3x/137851257/model_final_f6e8b1.pkl", (("box_ap", 42.0),)),
    ("mask_rcnn", 50, "1x", "COCO-InstanceSegmentation/mask_rcnn_R_50_FAN_1x.yaml",
     (("mask_ap", 36.4), ("box_ap", 39.8)),
     "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x/137260431/model_final_a54504.pkl",
     (("mask_ap", 35.2), ("box_ap", 38.6))),
    ("mask_rcnn", 101, "3x", "COCO-InstanceSegmentation/mask_rcnn_R_101_FAN_3x.yaml",
     (("mask_ap", 39.4), ("box_ap", 43.8)),
     "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x/138205316/model_final_a3ec72.pkl",
     (("mask_ap", 38.6), ("box_ap", 42.9))),
    ("panoptic_fpn", 50, "1x", "COCO-PanopticSegmentation/panoptic_fan_R_50_1x.yaml",
     (("pq", 41.1), ("box_ap", 38.7), ("mean_iou", 43.4)),
     "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x/139514544/model_final_dbfeb4.pkl", (("pq", 39.4),)),
    ("panoptic_fpn", 101, "3x", "COCO-PanopticSegmentation/panoptic_fan_R_101_3x.yaml",
     (("pq", 44.2), ("box_ap", 43.0), ("mean_iou", 45.7)),
     "COCO-PanopticSegmentation/panoptic_fpn_R_101_3x/139514519/model_final_cafdb1.pkl", (("pq", 43.0),)),
)  # fmt: skip


def _original_models() -> dict[str, OriginalModel]:
    models = []
    for meta, depth, schedule, config, fapn_figures, zoo_path, fpn_figures in _RELEASES:
        labels = "coco_panoptic" if meta == "panoptic_fpn" else "coco"
        evaluate = f"{_COCO_DETECTION} --task {'panoptic' if meta == 'panoptic_fpn' else 'detection'}"
        for fapn in (True, False):
            neck = "fapn" if fapn else "fpn"
            models.append(
                OriginalModel(
                    name=f"{_NAMES[meta]}-{neck}-r{depth}-{schedule}-coco",
                    converter=CONVERTER,
                    description=f"{_DESCRIPTIONS[meta]} + {'FaPN' if fapn else 'FPN'}, ResNet-{depth} (MSRA), "
                    f"COCO {schedule}",
                    labels=labels,
                    original_config=f"{_AUTHORS_REPO}/blob/main/detection/configs/{config}"
                    if fapn
                    else f"detectron2 configs/{zoo_path.rsplit('/', 2)[0]}.yaml",
                    test_shortest_edge=800,
                    test_longest_edge=1333,
                    evaluate_arguments=evaluate,
                    # The authors link their weights from the README of their repository; detectron2's are direct.
                    release_url=_AUTHORS_REPO if fapn else f"{_ZOO_DOWNLOADS}/{zoo_path}",
                    reported=tuple(
                        _coco(metric, value, fapn) for metric, value in (fapn_figures if fapn else fpn_figures)
                    ),
                    settings={"meta_architecture": meta, "fapn": fapn, "depth": depth},
                )
            )
    return {model.name: model for model in models}


# settings: `meta_architecture`, `fapn` (the FaPN neck, else detectron2's FPN) and `depth` (MSRA ResNet).
ORIGINAL_MODELS: dict[str, OriginalModel] = _original_models()

__all__ = ["CONVERTER", "LABEL_SETS", "ORIGINAL_MODELS", "RCNN_RENAMES"]
