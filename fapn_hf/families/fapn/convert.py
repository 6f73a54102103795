"""The FaPN semantic family's conversion (SPEC 2.2-2.6, 3): the detectron2 `SemanticSegmentor` with the FaPN backbone
(`FAN`) and a semantic FPN head, optionally refined by PointRend (the authors' Cityscapes models), into
`FaPNForSemanticSegmentation` folders.

    fapn-convert --checkpoint model_final.pth --model fapn-r50-pointrend-cityscapes --output_dir fapn-r50-pointrend

What renaming alone cannot do happens in `_semantic_fapn_transform`: the stem conv's input channels are reversed
(detectron2 feeds BGR, the package RGB), and each FrozenBN turned BatchNorm gets a zero `num_batches_tracked`.
The toolkit (`fapn_hf.convert`) reads, fills strictly and records; the registry collects `CONVERTER` and
`ORIGINAL_MODELS` through this family's `FAMILY`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
from ...labels import label_maps
from ...modeling.configuration_fapn import FaPNConfig
from ...modeling.image_processing_fapn import FaPNImageProcessor
from ...modeling.modeling_fapn import FaPNForSemanticSegmentation
from .presets import fapn_preset_image_processor

_ALIGN, _FSM, _FAM = "backbone.fan_align{level}", "fapn.neck.lateral_convs.{level-2}", "fapn.neck.alignments.{level-2}"
SEMANTIC_FAPN_RENAMES = RenameTable.of(
    [
        # MSRA ResNet (stride in the 1x1 conv, FrozenBN) -> transformers ResNetBackbone(downsample_in_bottleneck).
        *detectron2_resnet_to_transformers("backbone.bottom_up", "fapn.backbone"),
        # The FaPN neck (FAN): fan_align5 is the top 1x1 lateral conv; fan_align2..4 are FSM + FAM per level.
        ("backbone.fan_align5.{param}", "fapn.neck.top_lateral_conv.conv.{param}"),
        (f"{_ALIGN}.lateral_conv.conv_atten.weight", f"{_FSM}.attention.conv.weight"),
        (f"{_ALIGN}.lateral_conv.conv.weight", f"{_FSM}.projection.conv.weight"),
        *feature_alignment_renames(_ALIGN, _FAM),
        ("backbone.fpn_output{level}.{param}", "fapn.neck.output_convs.{level-2}.conv.{param}"),
        # SemSegFPNHead (under PointRend: coarse_sem_seg_head): p{level}.{2k} is conv k, odd indices are upsamples.
        ("{head}.p{level}.{layer}.weight", "decode_head.scale_heads.{level-2}.{layer/2}.conv.weight"),
        ("{head}.p{level}.{layer}.norm.{param}", "decode_head.scale_heads.{level-2}.{layer/2}.norm.{param}"),
        ("{head}.predictor.{param}", "decode_head.predictor.conv.{param}"),
        # PointRend's StandardPointHead: fc1..fcN, predictor.
        ("sem_seg_head.point_head.fc{layer}.{param}", "point_head.layers.{layer-1}.{param}"),
        ("sem_seg_head.point_head.predictor.{param}", "point_head.predictor.{param}"),
    ],
    # The semantic FPN head sits directly under sem_seg_head, or under PointRend's coarse head.
    patterns={"head": r"sem_seg_head|sem_seg_head\.coarse_sem_seg_head"},
)

RESNET_DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
# detectron2's default normalisation (BGR order, 0..255 input), used when a checkpoint does not store its own.
DETECTRON2_PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
DETECTRON2_PIXEL_STD_BGR = (1.0, 1.0, 1.0)
STEM_CONV = "fapn.backbone.embedder.embedder.convolution.weight"


def _semantic_fapn_config(model: OriginalModel) -> FaPNConfig:
    """The package config of the authors' model: the MSRA trunk as a transformers ResNet, FaPN without neck norm,
    the semantic FPN head, PointRend as in their Cityscapes config, the backbone frozen as they trained it."""
    from transformers import ResNetConfig

    id2label, label2id = label_maps(model.labels)
    trunk = ResNetConfig(
        layer_type="bottleneck",
        embedding_size=64,
        hidden_sizes=[256, 512, 1024, 2048],
        depths=RESNET_DEPTHS[model.settings["depth"]],
        downsample_in_bottleneck=True,  # STRIDE_IN_1X1: the MSRA layout
        hidden_act="relu",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return FaPNConfig(
        backbone_config=trunk,
        use_fam=True,
        use_fsm=True,
        neck_channels=256,
        deformable_groups=8,
        neck_norm="",
        head_channels=128,
        size_divisibility=32,
        semantic_loss_ignore_index=255,
        use_point_rend=model.settings["point_rend"],
        point_head_channels=256,
        point_head_num_layers=3,
        point_head_coarse_pred_each_layer=False,
        point_rend_train_num_points=2048,
        point_rend_oversample_ratio=3.0,
        point_rend_importance_sample_ratio=0.75,
        point_rend_subdivision_steps=2,
        point_rend_subdivision_num_points=8192,
        # RESNETS.NORM FrozenBN; BACKBONE.FREEZE_AT 0 in the authors' Base-PointRend-Semantic-FAN.yaml.
        freeze_backbone_norm=True,
        freeze_backbone_stages=0,
        id2label=id2label,
        label2id=label2id,
    )


def _semantic_fapn_transform(
    tensors: dict[str, torch.Tensor], checkpoint: Checkpoint, model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """BGR -> RGB by reversing the stem conv's input channels; a zero `num_batches_tracked` for every FrozenBN
    turned BatchNorm (FrozenBN has none; in eval it is unused)."""
    tensors = dict(tensors)
    if STEM_CONV in tensors:
        tensors[STEM_CONV] = tensors[STEM_CONV].flip(1).contiguous()
    for name in [n for n in tensors if n.endswith(".running_mean")]:
        tensors[name.removesuffix("running_mean") + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return tensors


def _semantic_fapn_processor(model: OriginalModel, checkpoint: Checkpoint) -> FaPNImageProcessor:
    """RGB in, `(x / 255 - mean) / std` with mean = PIXEL_MEAN[::-1] / 255 and std = PIXEL_STD[::-1] / 255: exactly
    detectron2's `(x_bgr - PIXEL_MEAN) / PIXEL_STD` on the 0..255 image, channels reordered like the stem conv.
    Resize: the shorter side to the original MIN_SIZE_TEST, the longer capped at MAX_SIZE_TEST, exactly as detectron2's
    `ResizeShortestEdge` (`detectron2_resize`)."""
    mean = pixel_statistic(checkpoint, "pixel_mean", DETECTRON2_PIXEL_MEAN_BGR, order="B, G, R")[::-1]
    std = pixel_statistic(checkpoint, "pixel_std", DETECTRON2_PIXEL_STD_BGR, order="B, G, R")[::-1]
    if min(std) <= 0:
        raise CheckpointError(f"{checkpoint.path}: pixel_std must be positive, got {std[::-1]} (B, G, R)")
    return fapn_preset_image_processor(
        labels=model.labels,
        image_mean=[value / 255 for value in mean],
        image_std=[value / 255 for value in std],
        do_resize=True,
        size={"shortest_edge": model.test_shortest_edge, "longest_edge": model.test_longest_edge},
        detectron2_resize=True,
    )


def _recognise_semantic_fapn(keys: Sequence[str]) -> bool:
    # The FaPN neck inside the backbone and a semantic head; a detector's or MaskFormer's head under the same names
    # would make it another model.
    return (
        any(k.startswith("backbone.bottom_up.") for k in keys)
        and any(k.startswith("backbone.fan_align") for k in keys)
        and any(k.startswith("sem_seg_head.") for k in keys)
        and not any(k.startswith(("roi_heads.", "proposal_generator.", "sem_seg_head.pixel_decoder.")) for k in keys)
    )


def _check_semantic_fapn(model: OriginalModel, checkpoint: Checkpoint) -> None:
    keys = checkpoint.keys
    has_point_head = any(k.startswith("sem_seg_head.point_head.") for k in keys)
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"backbone\.bottom_up\.res4\.(\d+)\.", k))}
    depth = next((d for d, depths in RESNET_DEPTHS.items() if depths[2] == len(blocks)), None)
    found = f"R{depth}" if depth else f"a ResNet with {len(blocks)} res4 blocks"
    found += " with PointRend" if has_point_head else " without PointRend (plain semantic FPN head)"
    wanted_depth, wanted_point_rend = model.settings["depth"], model.settings["point_rend"]
    if depth != wanted_depth or has_point_head != wanted_point_rend:
        matching = [
            m.name
            for m in ORIGINAL_MODELS.values()
            if (m.settings["depth"], m.settings["point_rend"]) == (depth, has_point_head)
        ]
        hint = f"; use --model {matching[0]}" if matching else ""
        raise CheckpointError(
            f"{checkpoint.path} is a FaPN semantic model on {found}, but {model.name} is R{wanted_depth} "
            f"{'with' if wanted_point_rend else 'without'} PointRend{hint}"
        )


CONVERTER = Converter(
    name="detectron2 SemanticSegmentor with the FaPN backbone (FAN) and a semantic FPN head",
    renames=SEMANTIC_FAPN_RENAMES,
    recognise=_recognise_semantic_fapn,
    build_config=_semantic_fapn_config,
    build_model=FaPNForSemanticSegmentation,
    transform=_semantic_fapn_transform,
    processor_tensors=("pixel_mean", "pixel_std"),
    build_processor=_semantic_fapn_processor,
    check=_check_semantic_fapn,
    checkpoint_signatures=((("backbone.fan_align",), "a FaPN semantic segmentation model"),),
)

_AUTHORS_REPO = "https://github.com/EMI-Group/FaPN"
_POINTREND_CONFIGS = "projects/PointRend/configs/SemanticSegmentation"


# Cityscapes is not on the Hub: a save_to_disk DatasetDict of leftImg8bit images and gtFine_labelIds maps.
_CITYSCAPES_EVALUATION = "--dataset /data/cityscapes --split validation --label_mapping cityscapes"


def _cityscapes_miou(value: float) -> ReportedResult:
    return ReportedResult("cityscapes", "val", "mean_iou", value, "FaPN authors' model table", _AUTHORS_REPO)


# settings: `depth` (ResNet depth, MSRA layout) and `point_rend` (PointRend refinement on the semantic FPN head).
ORIGINAL_MODELS: dict[str, OriginalModel] = {
    model.name: model
    for model in (
        OriginalModel(
            name="fapn-r50-pointrend-cityscapes",
            converter=CONVERTER,
            description="PointRend + FaPN, ResNet-50 (MSRA), Cityscapes",
            labels="cityscapes",
            original_config=f"{_POINTREND_CONFIGS}/pointrend_semantic_R_50_FAN_1x_cityscapes.yaml",
            test_shortest_edge=1024,
            test_longest_edge=2048,
            evaluate_arguments=_CITYSCAPES_EVALUATION,
            release_url="https://drive.google.com/file/d/1R6af03eqnUufmYl7cf-eixbI_En8WN-8/view",
            reported=(_cityscapes_miou(80.0),),
            settings={"depth": 50, "point_rend": True},
        ),
        OriginalModel(
            name="fapn-r101-pointrend-cityscapes",
            converter=CONVERTER,
            description="PointRend + FaPN, ResNet-101 (MSRA), Cityscapes",
            labels="cityscapes",
            original_config=f"{_POINTREND_CONFIGS}/pointrend_semantic_R_101_FAN_1x_cityscapes.yaml",
            test_shortest_edge=1024,
            test_longest_edge=2048,
            evaluate_arguments=_CITYSCAPES_EVALUATION,
            release_url="https://drive.google.com/file/d/1JSg9hweCIYZOhSceZAeF6CcbqIAiLKfr/view",
            reported=(_cityscapes_miou(80.1),),
            settings={"depth": 101, "point_rend": True},
        ),
        # Semantic FPN + FaPN without PointRend (SEM_SEG_HEAD.NAME: SemSegFPNHead): no released weights; for
        # checkpoints trained with the authors' code.
        OriginalModel(
            name="fapn-r50-cityscapes",
            converter=CONVERTER,
            description="semantic FPN + FaPN, ResNet-50 (MSRA), Cityscapes",
            labels="cityscapes",
            original_config="SemanticSegmentor + build_resnet_fan_backbone + SemSegFPNHead, R-50",
            test_shortest_edge=1024,
            test_longest_edge=2048,
            evaluate_arguments=_CITYSCAPES_EVALUATION,
            settings={"depth": 50, "point_rend": False},
        ),
        OriginalModel(
            name="fapn-r101-cityscapes",
            converter=CONVERTER,
            description="semantic FPN + FaPN, ResNet-101 (MSRA), Cityscapes",
            labels="cityscapes",
            original_config="SemanticSegmentor + build_resnet_fan_backbone + SemSegFPNHead, R-101",
            test_shortest_edge=1024,
            test_longest_edge=2048,
            evaluate_arguments=_CITYSCAPES_EVALUATION,
            settings={"depth": 101, "point_rend": False},
        ),
    )
}

__all__ = ["CONVERTER", "ORIGINAL_MODELS", "SEMANTIC_FAPN_RENAMES"]
