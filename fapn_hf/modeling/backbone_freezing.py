"""Freezing a backbone as detectron2 fine-tunes one: frozen BatchNorm and frozen leading stages (`FREEZE_AT`).

Works on both kinds of backbone of transformers' backbone API: timm models (`TimmBackbone`) and transformers
backbones with an `embedder`/`embeddings` stem and `encoder.stages`/`encoder.layers` (ResNet, Swin, ...).
The norm layers stay `BatchNorm2d` (the weights load and save like unfrozen ones); freezing only keeps them in
inference mode and takes their parameters out of training.
"""

from __future__ import annotations

from torch import nn

# detectron2's FREEZE_AT: 1 is the stem, 2..5 add the stride 4, 8, 16 and 32 stages (res2..res5).
MAX_FROZEN_STAGES = 5


def _timm_stem_and_stages(model: nn.Module) -> tuple[list[nn.Module], list[list[nn.Module]]]:
    """A timm `features_only` model: its children before the first pyramid output, then one group per output."""
    children = list(model.named_children())
    names = [name for name, _ in children]
    # Feature modules are named with dots ("stages.0"); features_only models flatten them to "stages_0".
    output_names = [name.replace(".", "_") for name in model.feature_info.module_name()]
    missing = [name for name in output_names if name not in names]
    if missing:
        raise ValueError(f"cannot locate the backbone stages {missing} among the timm model's modules {names}")
    positions = [names.index(name) for name in output_names]
    # Stage i is everything after output i - 1 up to and including output i (e.g. a downsampling layer before it).
    bounds = [positions[0] - 1, *positions]
    stages = [[module for _, module in children[start + 1 : end + 1]] for start, end in zip(bounds, bounds[1:])]
    return [module for _, module in children[: positions[0]]], stages


def _transformers_stem_and_stages(backbone: nn.Module) -> tuple[list[nn.Module], list[list[nn.Module]]]:
    """A transformers backbone: the embedding module, then the encoder stage behind each pyramid output."""
    stem = getattr(backbone, "embedder", None) or getattr(backbone, "embeddings", None)
    encoder = getattr(backbone, "encoder", None)
    blocks = getattr(encoder, "stages", None) or getattr(encoder, "layers", None)
    if stem is None or blocks is None:
        raise ValueError(
            f"freeze_backbone_stages: {type(backbone).__name__} has no `embedder`/`embeddings` stem with "
            "`encoder.stages`/`encoder.layers`; only timm backbones and transformers backbones laid out like ResNet "
            "or Swin can have stages frozen"
        )
    # out_indices count the stem as 0: stage i of the encoder is output i + 1.
    return [stem], [[blocks[index - 1]] for index in backbone.out_indices]


def backbone_stem_and_stages(backbone: nn.Module) -> tuple[list[nn.Module], list[list[nn.Module]]]:
    """The stem modules and, for each pyramid output (strides 4, 8, 16, 32), the modules that compute it."""
    timm_model = getattr(backbone, "_backbone", None)
    if timm_model is not None and hasattr(timm_model, "feature_info"):
        return _timm_stem_and_stages(timm_model)
    return _transformers_stem_and_stages(backbone)


def frozen_modules(backbone: nn.Module, num_stages: int) -> list[nn.Module]:
    """The modules detectron2's `FREEZE_AT = num_stages` freezes: none (0), the stem (1), the stem and res2 (2), ..."""
    if not 0 <= num_stages <= MAX_FROZEN_STAGES:
        raise ValueError(f"freeze_backbone_stages must lie in [0, {MAX_FROZEN_STAGES}], got {num_stages}")
    if num_stages == 0:
        return []
    stem, stages = backbone_stem_and_stages(backbone)
    return stem + [module for stage in stages[: num_stages - 1] for module in stage]


def _batch_norms(modules: list[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def frozen_norms(backbone: nn.Module, freeze_norm: bool, num_stages: int) -> list[nn.Module]:
    """The BatchNorm layers that must stay in inference mode: all of the backbone's with `freeze_norm`, else those
    inside the frozen stages."""
    return _batch_norms([backbone] if freeze_norm else frozen_modules(backbone, num_stages))


def freeze_backbone(backbone: nn.Module, freeze_norm: bool, num_stages: int) -> None:
    """Takes the frozen stages' parameters and, with `freeze_norm`, every BatchNorm's affine parameters out of
    training (`requires_grad=False`), and puts the frozen norms in inference mode. Call `keep_norms_frozen` after
    every `train()`, which would switch them back."""
    for module in frozen_modules(backbone, num_stages):
        module.requires_grad_(False)
    for norm in frozen_norms(backbone, freeze_norm, num_stages):
        norm.requires_grad_(False)
    keep_norms_frozen(backbone, freeze_norm, num_stages)


def keep_norms_frozen(backbone: nn.Module, freeze_norm: bool, num_stages: int) -> None:
    """Puts the frozen BatchNorm layers back in inference mode: they normalise with their running statistics and
    never update them, like detectron2's `FrozenBatchNorm2d`."""
    for norm in frozen_norms(backbone, freeze_norm, num_stages):
        norm.eval()


__all__ = ["MAX_FROZEN_STAGES", "backbone_stem_and_stages", "freeze_backbone", "frozen_modules", "keep_norms_frozen"]
