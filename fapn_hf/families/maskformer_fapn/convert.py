"""The MaskFormer + FaPN family's conversion: the authors' ADE20K Swin-L and COCO-Stuff-10K ResNet-101 checkpoints
(MaskFormer's detectron2 layout with the `BasePixelFANDecoder` keys of SPEC 3) into
`MaskFormerFaPNForInstanceSegmentation` folders. Built on the toolkit (`fapn_hf.convert`); the registry collects
`CONVERTER` and `ORIGINAL_MODELS` through this family's `FAMILY`.

    fapn-convert --checkpoint model_final.pth --model maskformer-fapn-r101-cocostuff --output_dir maskformer-fapn-r101

What renaming alone cannot do happens in `_maskformer_transform`: the transformer decoder's fused `in_proj`
(query, key, value stacked in that order, as `nn.MultiheadAttention` stores them) is split into transformers'
`q_proj`/`k_proj`/`v_proj`; Swin's stored `relative_position_index` buffers are checked against the model's and
dropped; each level's GroupNorm, stored twice (`align_k.offset.norm`, `layer_k.norm`), must hold equal values. Input
is RGB with MaskFormer's PIXEL_MEAN/PIXEL_STD (ImageNet) on 0..255, so no channel flip.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...convert import (
    Checkpoint,
    CheckpointError,
    Converter,
    OriginalModel,
    RenameTable,
    ReportedResult,
    detectron2_resnet_renames,
    feature_alignment_renames,
    pixel_statistic,
)
from ...modeling.configuration_maskformer_fapn import MaskFormerFaPNConfig
from ...modeling.image_processing_maskformer_fapn import MaskFormerFaPNImageProcessor
from ...modeling.modeling_maskformer_fapn import MaskFormerFaPNForInstanceSegmentation
from .presets import maskformer_preset_config

_BACKBONE = "model.pixel_level_module.encoder._backbone"
_DECODER_IN, _DECODER = "sem_seg_head.pixel_decoder", "model.pixel_level_module.decoder"
_TRANSFORMER_IN = "sem_seg_head.predictor.transformer.decoder"
_TRANSFORMER = "model.transformer_module.decoder"
_PREDICTOR = "sem_seg_head.predictor"
# The fused attention projections, renamed to these intermediate names and split by the transform.
_FUSED_PROJECTIONS = {"self_attn": "self_attn", "multihead_attn": "encoder_attn"}

MASKFORMER_FAPN_RENAMES = RenameTable.of(
    [
        # detectron2's ResNet with a basic stem, stride in the 3x3 conv (torchvision layout), FrozenBN -> timm ResNet.
        *detectron2_resnet_renames(
            "backbone",
            stem=f"{_BACKBONE}.conv1.weight",
            stem_norm=f"{_BACKBONE}.bn1.{{stat}}",
            conv=f"{_BACKBONE}.layer{{stage-1}}.{{block}}.conv{{conv}}.weight",
            conv_norm=f"{_BACKBONE}.layer{{stage-1}}.{{block}}.bn{{conv}}.{{stat}}",
            shortcut=f"{_BACKBONE}.layer{{stage-1}}.{{block}}.downsample.0.weight",
            shortcut_norm=f"{_BACKBONE}.layer{{stage-1}}.{{block}}.downsample.1.{{stat}}",
        ),
        # D2SwinTransformer -> timm's Swin (patch merging closes stage i in the original, opens stage i + 1 in timm)
        # plus the four per-stage output norms.
        ("backbone.patch_embed.proj.{param}", f"{_BACKBONE}.patch_embed.proj.{{param}}"),
        ("backbone.patch_embed.norm.{param}", f"{_BACKBONE}.patch_embed.norm.{{param}}"),
        (
            "backbone.layers.{stage}.blocks.{block}.norm1.{param}",
            f"{_BACKBONE}.layers_{{stage}}.blocks.{{block}}.norm1.{{param}}",
        ),
        (
            "backbone.layers.{stage}.blocks.{block}.norm2.{param}",
            f"{_BACKBONE}.layers_{{stage}}.blocks.{{block}}.norm2.{{param}}",
        ),
        (
            "backbone.layers.{stage}.blocks.{block}.attn.qkv.{param}",
            f"{_BACKBONE}.layers_{{stage}}.blocks.{{block}}.attn.qkv.{{param}}",
        ),
        (
            "backbone.layers.{stage}.blocks.{block}.attn.proj.{param}",
            f"{_BACKBONE}.layers_{{stage}}.blocks.{{block}}.attn.proj.{{param}}",
        ),
        (
            "backbone.layers.{stage}.blocks.{block}.attn.relative_position_bias_table",
            f"{_BACKBONE}.layers_{{stage}}.blocks.{{block}}.attn.relative_position_bias_table",
        ),
        (
            "backbone.layers.{stage}.blocks.{block}.attn.relative_position_index",
            f"{_BACKBONE}.layers_{{stage}}.blocks.{{block}}.attn.relative_position_index",
        ),
        (
            "backbone.layers.{stage}.blocks.{block}.mlp.fc{conv}.{param}",
            f"{_BACKBONE}.layers_{{stage}}.blocks.{{block}}.mlp.fc{{conv}}.{{param}}",
        ),
        (
            "backbone.layers.{stage}.downsample.reduction.weight",
            f"{_BACKBONE}.layers_{{stage+1}}.downsample.reduction.weight",
        ),
        (
            "backbone.layers.{stage}.downsample.norm.{param}",
            f"{_BACKBONE}.layers_{{stage+1}}.downsample.norm.{{param}}",
        ),
        ("backbone.norm{level}.{param}", "model.pixel_level_module.encoder_output_norms.{level}.{param}"),
        # BasePixelFANDecoder: layer_4 on res5; adapter_k / align_k / layer_k for k = 1, 2, 3 (res2, res3, res4).
        (f"{_DECODER_IN}.layer_4.weight", f"{_DECODER}.top_conv.conv.weight"),
        (f"{_DECODER_IN}.layer_4.norm.{{param}}", f"{_DECODER}.top_conv.norm.{{param}}"),
        (f"{_DECODER_IN}.adapter_{{fam_level}}.weight", f"{_DECODER}.lateral_convs.{{fam_level-1}}.conv.weight"),
        (
            f"{_DECODER_IN}.adapter_{{fam_level}}.norm.{{param}}",
            f"{_DECODER}.lateral_convs.{{fam_level-1}}.norm.{{param}}",
        ),
        *feature_alignment_renames(
            f"{_DECODER_IN}.align_{{fam_level}}", f"{_DECODER}.alignments.{{fam_level-1}}", offset_norm=True
        ),
        (f"{_DECODER_IN}.layer_{{fam_level}}.weight", f"{_DECODER}.output_convs.{{fam_level-1}}.conv.weight"),
        (
            f"{_DECODER_IN}.layer_{{fam_level}}.norm.{{param}}",
            f"{_DECODER}.output_convs.{{fam_level-1}}.norm.{{param}}",
        ),
        (f"{_DECODER_IN}.mask_features.{{param}}", f"{_DECODER}.mask_projection.conv.{{param}}"),
        # MaskFormer's transformer predictor (DETR decoder, post-norm) and heads.
        (f"{_PREDICTOR}.query_embed.weight", "model.transformer_module.queries_embedder.weight"),
        (f"{_PREDICTOR}.input_proj.{{param}}", "model.transformer_module.input_projection.{param}"),
        (
            f"{_TRANSFORMER_IN}.layers.{{layer}}.self_attn.in_proj_{{param}}",
            f"{_TRANSFORMER}.layers.{{layer}}.self_attn.in_proj.{{param}}",
        ),
        (
            f"{_TRANSFORMER_IN}.layers.{{layer}}.self_attn.out_proj.{{param}}",
            f"{_TRANSFORMER}.layers.{{layer}}.self_attn.o_proj.{{param}}",
        ),
        (
            f"{_TRANSFORMER_IN}.layers.{{layer}}.multihead_attn.in_proj_{{param}}",
            f"{_TRANSFORMER}.layers.{{layer}}.encoder_attn.in_proj.{{param}}",
        ),
        (
            f"{_TRANSFORMER_IN}.layers.{{layer}}.multihead_attn.out_proj.{{param}}",
            f"{_TRANSFORMER}.layers.{{layer}}.encoder_attn.o_proj.{{param}}",
        ),
        (
            f"{_TRANSFORMER_IN}.layers.{{layer}}.linear{{conv}}.{{param}}",
            f"{_TRANSFORMER}.layers.{{layer}}.mlp.fc{{conv}}.{{param}}",
        ),
        (
            f"{_TRANSFORMER_IN}.layers.{{layer}}.norm1.{{param}}",
            f"{_TRANSFORMER}.layers.{{layer}}.self_attn_layer_norm.{{param}}",
        ),
        (
            f"{_TRANSFORMER_IN}.layers.{{layer}}.norm2.{{param}}",
            f"{_TRANSFORMER}.layers.{{layer}}.encoder_attn_layer_norm.{{param}}",
        ),
        (
            f"{_TRANSFORMER_IN}.layers.{{layer}}.norm3.{{param}}",
            f"{_TRANSFORMER}.layers.{{layer}}.final_layer_norm.{{param}}",
        ),
        (f"{_TRANSFORMER_IN}.norm.{{param}}", f"{_TRANSFORMER}.layernorm.{{param}}"),
        (f"{_PREDICTOR}.class_embed.{{param}}", "class_predictor.{param}"),
        (f"{_PREDICTOR}.mask_embed.layers.{{layer}}.{{param}}", "mask_embedder.{layer}.0.{param}"),
        ("criterion.empty_weight", "criterion.empty_weight"),
    ],
    # BasePixelFANDecoder: adapter_k / align_k / layer_k for the levels below the top layer_4.
    patterns={"fam_level": r"[1-3]"},
)

# MaskFormer's PIXEL_MEAN / PIXEL_STD (RGB, 0..255) in both released configs.
MASKFORMER_PIXEL_MEAN_RGB = (123.675, 116.280, 103.530)
MASKFORMER_PIXEL_STD_RGB = (58.395, 57.120, 57.375)


def _maskformer_config(model: OriginalModel) -> MaskFormerFaPNConfig:
    """The preset's config (timm Swin-L with output norms / timm ResNet-101, FaPN decoder, the original MaskFormer
    settings) with the original model's label set."""
    return maskformer_preset_config(model.settings["preset"], model.labels)


def _split_fused_projections(tensors: dict[str, torch.Tensor]) -> None:
    for name in [n for n in tensors if ".in_proj." in n]:
        fused = tensors.pop(name)
        prefix, param = name.rsplit(".in_proj.", 1)
        if fused.shape[0] % 3:
            raise CheckpointError(f"{name}: {tuple(fused.shape)} cannot be split into query, key and value")
        for part, chunk in zip(("q_proj", "k_proj", "v_proj"), fused.chunk(3, dim=0)):
            tensors[f"{prefix}.{part}.{param}"] = chunk.contiguous()


def _maskformer_transform(
    tensors: dict[str, torch.Tensor], checkpoint: Checkpoint, model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Splits the fused attention projections, checks and drops Swin's relative position indices, checks that each
    shared GroupNorm was stored twice with equal values, and fills what a FrozenBN / a checkpoint without the loss
    buffer lacks (`num_batches_tracked` = 0, the no-object weight from the config)."""
    tensors = dict(tensors)
    _split_fused_projections(tensors)
    for name in [n for n in tensors if n.endswith(".relative_position_index")]:
        stored = tensors.pop(name)
        expected = model.get_buffer(name)
        if stored.shape != expected.shape or not torch.equal(stored.to(expected.dtype), expected):
            raise CheckpointError(
                f"{checkpoint.path}: {name} differs from the window the model is built with ({tuple(stored.shape)} vs "
                f"{tuple(expected.shape)}): a Swin with another window size?"
            )
    for name in [n for n in tensors if ".offset_conv.norm." in n]:
        shared = name.replace(".alignments.", ".output_convs.").replace(".offset_conv.norm.", ".norm.")
        if shared in tensors and not torch.equal(tensors[name], tensors[shared]):
            raise CheckpointError(
                f"{checkpoint.path}: the offset conv and the output conv of a pixel decoder level share one GroupNorm "
                f"in the original, but {name} and {shared} hold different values"
            )
    expected_state = model.state_dict()
    for name in [n for n in tensors if n.endswith(".running_mean")]:
        counter = name.removesuffix("running_mean") + "num_batches_tracked"
        if counter in expected_state and counter not in tensors:
            tensors[counter] = torch.tensor(0, dtype=torch.long)
    if "criterion.empty_weight" not in tensors:
        tensors["criterion.empty_weight"] = expected_state["criterion.empty_weight"].clone()
    return tensors


def _maskformer_processor(model: OriginalModel, checkpoint: Checkpoint) -> MaskFormerFaPNImageProcessor:
    """RGB in, `(x / 255 - PIXEL_MEAN / 255) / (PIXEL_STD / 255)`, the shorter side resized to MIN_SIZE_TEST (longer
    capped at MAX_SIZE_TEST) exactly as the original's `ResizeShortestEdge` (`detectron2_resize`: `int(x + 0.5)`
    sizes, PIL bilinear on the uint8 image); the model pads to 32 as the original `ImageList`."""
    mean = pixel_statistic(checkpoint, "pixel_mean", MASKFORMER_PIXEL_MEAN_RGB, order="R, G, B")
    std = pixel_statistic(checkpoint, "pixel_std", MASKFORMER_PIXEL_STD_RGB, order="R, G, B")
    if min(std) <= 0:
        raise CheckpointError(f"{checkpoint.path}: pixel_std must be positive, got {std}")
    return MaskFormerFaPNImageProcessor(
        image_mean=[value / 255 for value in mean],
        image_std=[value / 255 for value in std],
        size={"shortest_edge": model.test_shortest_edge, "longest_edge": model.test_longest_edge},
        do_reduce_labels=model.labels == "ade20k",
        ignore_index=255,
        detectron2_resize=True,
    )


def _recognise_maskformer_fapn(keys: Sequence[str]) -> bool:
    return any(k.startswith(f"{_DECODER_IN}.align_") for k in keys) and any(
        k.startswith(f"{_PREDICTOR}.transformer.") for k in keys
    )


def _check_maskformer_fapn(model: OriginalModel, checkpoint: Checkpoint) -> None:
    keys = checkpoint.keys
    is_swin = any(k.startswith("backbone.layers.") for k in keys)
    is_resnet = any(k.startswith("backbone.res4.") for k in keys)
    wanted_swin = model.settings["backbone"] == "swin"
    if is_swin != wanted_swin or is_resnet == wanted_swin:
        found = "a Swin backbone" if is_swin else "a ResNet backbone" if is_resnet else "an unknown backbone"
        matching = [m.name for m in ORIGINAL_MODELS.values() if (m.settings["backbone"] == "swin") == is_swin]
        hint = f"; use --model {matching[0]}" if matching and (is_swin or is_resnet) else ""
        raise CheckpointError(f"{checkpoint.path} is MaskFormer + FaPN on {found}, not what {model.name} is{hint}")


CONVERTER = Converter(
    name="MaskFormer with the FaPN pixel decoder (BasePixelFANDecoder)",
    renames=MASKFORMER_FAPN_RENAMES,
    recognise=_recognise_maskformer_fapn,
    build_config=_maskformer_config,
    build_model=MaskFormerFaPNForInstanceSegmentation,
    transform=_maskformer_transform,
    processor_tensors=("pixel_mean", "pixel_std"),
    build_processor=_maskformer_processor,
    check=_check_maskformer_fapn,
    # Any MaskFormer (its pixel decoder or transformer predictor), with the FaPN decoder or not.
    checkpoint_signatures=(
        (("sem_seg_head.pixel_decoder.", "sem_seg_head.predictor.transformer"), "a MaskFormer model"),
    ),
)

_FAPN_FULL = "https://github.com/ShihuaHuang95/FaPN-full"
_CONFIGS = "MaskFormer/configs"


def _reported(dataset: str, split: str, value: float, source: str) -> ReportedResult:
    return ReportedResult(dataset, split, "mean_iou", value, source, "https://arxiv.org/abs/2108.07058")


# settings: `preset` (the package preset whose config it is) and `backbone` (`"swin"` or `"resnet"`, for `check`).
ORIGINAL_MODELS: dict[str, OriginalModel] = {
    model.name: model
    for model in (
        OriginalModel(
            name="maskformer-fapn-swin-l-ade20k",
            converter=CONVERTER,
            description="MaskFormer + FaPN, Swin-L (IN-21k, 384), ADE20K-150, 640",
            labels="ade20k",
            original_config=f"{_CONFIGS}/ade20k-150/swin/maskformer_swin_large+FaPN_IN21k_384_bs16_160k_res640.yaml",
            test_shortest_edge=640,
            test_longest_edge=2560,
            evaluate_arguments="--dataset <ADE20K-150 validation> --split validation",
            release_url=_FAPN_FULL,
            reported=(_reported("ade20k", "validation", 55.2, "FaPN paper, single-scale"),),
            settings={"preset": "maskformer-fapn-swin-l-ade20k", "backbone": "swin"},
        ),
        OriginalModel(
            name="maskformer-fapn-r101-cocostuff",
            converter=CONVERTER,
            description="MaskFormer + FaPN, ResNet-101 (torchvision layout), COCO-Stuff-10K (171 classes)",
            labels="cocostuff",
            original_config=f"{_CONFIGS}/coco-stuff-10k-171/maskformer_R101+FaPN_bs32_60k.yaml",
            test_shortest_edge=640,
            test_longest_edge=2560,
            evaluate_arguments="--dataset <COCO-Stuff-10K test> --split test",
            release_url=_FAPN_FULL,
            reported=(_reported("coco-stuff-10k", "test", 39.6, "FaPN paper, single-scale"),),
            settings={"preset": "maskformer-fapn-r101-cocostuff", "backbone": "resnet"},
        ),
    )
}

__all__ = ["CONVERTER", "MASKFORMER_FAPN_RENAMES", "ORIGINAL_MODELS"]
