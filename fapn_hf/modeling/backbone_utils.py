"""Backbones of every family, through transformers' backbone API: building the config of a timm backbone, loading and
initialising its weights, its layout (NHWC maps, checkpointable stages, the original Swin windows), and freezing it as
detectron2 fine-tunes one.

Part of the shipped kernel: imports nothing of the package (see `remote_code.KERNEL_MODULES`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedConfig, PreTrainedModel, TimmBackboneConfig
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.resnet.modeling_resnet import ResNetBackbone, ResNetStage
from transformers.utils import logging

from .config_checks import check_field_types

logger = logging.get_logger(__name__)

# Every family's neck consumes the C2..C5 maps of the backbone.
PYRAMID_STRIDES = (4, 8, 16, 32)


# ---------------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------------


def timm_backbone_config(name: str, **kwargs) -> TimmBackboneConfig:
    """Builds a `TimmBackboneConfig` that returns the stride-4/8/16/32 maps of the timm model `name`.

    The model is instantiated on the meta device to read its feature strides, so this is instant and needs no
    network access. Raises `ValueError` for names timm does not know, models without those four strides, or `kwargs`
    (`TimmBackboneConfig` settings) of the wrong type.
    """
    import timm

    # TimmBackboneConfig's strict fields would refuse a wrong type with an error that is no ValueError.
    check_field_types(kwargs, TimmBackboneConfig.__annotations__, "TimmBackboneConfig")
    if not isinstance(name, str):
        raise ValueError(f"a timm backbone is named by a string, got {name!r} ({type(name).__name__})")
    if not timm.is_model(name):
        similar = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        hint = f" Similar timm models: {', '.join(similar)}." if similar else ""
        raise ValueError(f"Unknown backbone {name!r}: timm has no model of that name.{hint}")
    with torch.device("meta"):
        features = timm.create_model(name, pretrained=False, features_only=True)
    reductions = features.feature_info.reduction()
    missing = [s for s in PYRAMID_STRIDES if s not in reductions]
    if missing:
        raise ValueError(
            f"Backbone {name!r} has feature strides {reductions}; FaPN needs maps at strides {PYRAMID_STRIDES}"
        )
    out_indices = [reductions.index(s) for s in PYRAMID_STRIDES]
    return TimmBackboneConfig(backbone=name, out_indices=out_indices, **kwargs)


def backbone_config_from_name(
    kwargs: dict, backbone_config: PreTrainedConfig | dict | None, owner: str
) -> PreTrainedConfig | dict | None:
    """Every family config's `backbone=` keyword: a timm model name, turned into `timm_backbone_config(name)` without
    network access. transformers would first ask the Hub whether a repo of that name exists (STACK_NOTES), so a
    config built offline would fail, and then pick timm's default outputs instead of the stride 4..32 maps.

    Pops `backbone` (with `use_timm_backbone` and `backbone_kwargs`, extra `TimmBackboneConfig` settings) from the
    config's `kwargs` and returns the backbone config; `backbone_config` as it is without `backbone`, or when
    `use_timm_backbone=False` asks for a transformers checkpoint of the Hub (transformers' own rule then). Raises
    `ValueError` (prefixed `owner: `) for both `backbone` and `backbone_config`, or a name that is not a string.
    """
    if kwargs.get("backbone") is None or kwargs.get("use_timm_backbone", True) is False:
        return backbone_config
    backbone = kwargs.pop("backbone")
    kwargs.pop("use_timm_backbone", None)
    settings = dict(kwargs.pop("backbone_kwargs", None) or {})
    if backbone_config is not None:
        raise ValueError(f"{owner}: pass either `backbone` (a timm model name) or `backbone_config`, not both.")
    if not isinstance(backbone, str):
        raise ValueError(f"{owner}: `backbone` must be a timm model name, got {type(backbone).__name__}")
    fixed = sorted({"out_indices", "out_features", "features_only"} & set(settings))
    if fixed:
        raise ValueError(
            f"{owner}: backbone_kwargs cannot set {fixed}: the model takes the backbone's stride 4, 8, 16 and 32 maps, "
            "which are chosen from the timm model; pass a backbone_config to choose others"
        )
    return timm_backbone_config(backbone, **settings)


def check_pyramid_backbone(backbone_config: PreTrainedConfig | None, owner: str) -> None:
    """Raises `ValueError` (prefixed `owner: `) unless `backbone_config` returns four feature maps (C2..C5): the check
    of every family's config."""
    outputs = getattr(backbone_config, "out_indices", None) or getattr(backbone_config, "out_features", None) or []
    if len(outputs) != len(PYRAMID_STRIDES):
        raise ValueError(
            f"{owner}: the backbone must return 4 feature maps (strides 4, 8, 16, 32), it is set to return "
            f"{list(outputs)}"
        )


def check_feature_strides(features: Sequence[torch.Tensor], input_size: tuple[int, int]) -> None:
    """Raises `ValueError` unless the backbone's four maps (NCHW) are at strides 4, 8, 16 and 32 of `input_size`
    (sides rounded either way): every family's neck reads C2..C5 as such, and other strides run without an error but
    align the wrong levels. Shapes only: no host synchronisation."""
    actual = [tuple(f.shape[-2:]) for f in features]
    fits = len(actual) == len(PYRAMID_STRIDES) and all(
        side // stride <= got <= -(-side // stride)
        for size, stride in zip(actual, PYRAMID_STRIDES)
        for got, side in zip(size, input_size)
    )
    if not fits:
        expected = [(-(-input_size[0] // s), -(-input_size[1] // s)) for s in PYRAMID_STRIDES]
        raise ValueError(
            f"the backbone's feature maps are {actual} for a {input_size[0]}x{input_size[1]} input; the FaPN neck "
            f"needs 4 maps at strides 4, 8, 16, 32 ({expected}): check the backbone config's out_indices / "
            "out_features"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Layout: timm models inside transformers' TimmBackbone
# ---------------------------------------------------------------------------------------------------------------------


def timm_model(backbone: nn.Module) -> nn.Module | None:
    """The timm model inside a transformers `TimmBackbone`; None for a transformers backbone."""
    return getattr(backbone, "_backbone", None)


def returns_channels_last(backbone: nn.Module) -> bool:
    """Whether `backbone`'s feature maps are NHWC: timm's transformer backbones (Swin) return them so."""
    return str(getattr(timm_model(backbone), "output_fmt", "")) in ("NHWC", "Format.NHWC")


def channels_first(features: Sequence[torch.Tensor], channels_last: bool) -> tuple[torch.Tensor, ...]:
    """The backbone maps as NCHW: `(N, H, W, C)` maps permuted (contiguous) when `channels_last`, else as they are."""
    if not channels_last:
        return tuple(features)
    return tuple(feature.permute(0, 3, 1, 2).contiguous() for feature in features)


def set_timm_gradient_checkpointing(backbone: nn.Module, enable: bool) -> None:
    """Switches timm's own activation checkpointing (non-reentrant, the stages after the stem) for a timm backbone;
    nothing for a transformers backbone, which transformers' switch reaches itself."""
    model = timm_model(backbone)
    if model is None:
        return
    for module in model.modules():
        if hasattr(module, "set_grad_checkpointing"):
            module.set_grad_checkpointing(enable)


class CheckpointedResNetStage(GradientCheckpointingLayer, ResNetStage):
    """transformers' `ResNetStage` as a GradientCheckpointingLayer (ResNet has no checkpointing of its own); same
    parameters and state-dict keys. `make_resnet_stages_checkpointable` gives a ResNet backbone's stages this class."""


def make_resnet_stages_checkpointable(backbone: nn.Module) -> None:
    """Turns the stages of a transformers `ResNetBackbone` into `CheckpointedResNetStage`s (in place, same weights);
    nothing for any other backbone."""
    if isinstance(backbone, ResNetBackbone):
        for stage in backbone.encoder.stages:
            stage.__class__ = CheckpointedResNetStage


# ---------------------------------------------------------------------------------------------------------------------
# timm's Swin with the original (detectron2) window semantics
# ---------------------------------------------------------------------------------------------------------------------


def _timm_swin_block_class() -> type | None:
    try:
        from timm.models.swin_transformer import SwinTransformerBlock
    except ImportError:  # timm absent: no timm Swin to adapt
        return None
    return SwinTransformerBlock


def make_original_swin_block_class(base: type) -> type:
    """A subclass of timm's `SwinTransformerBlock` whose window attention follows the original Swin (and
    detectron2's `D2SwinTransformer`): pad the map to a multiple of the window first, then shift, with the shift
    mask computed for the padded size; the window never shrinks and odd blocks always shift by half a window.
    timm shifts before padding and drops the shift when a stage's map is no larger than a window, which changes
    the output for inputs other than 384 x 384. Same parameters and state-dict keys as timm's block."""
    from timm.models.swin_transformer import window_partition, window_reverse

    class OriginalWindowSwinBlock(base):
        def _attn(self, x: torch.Tensor) -> torch.Tensor:
            _, height, width, channels = x.shape
            window_h, window_w = self.window_size
            pad_h, pad_w = (window_h - height % window_h) % window_h, (window_w - width % window_w) % window_w
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
            padded_h, padded_w = height + pad_h, width + pad_w
            shift = tuple(self.shift_size)
            if any(shift):
                x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
                mask = self.get_attn_mask(x)
            else:
                mask = None
            windows = window_partition(x, self.window_size).view(-1, window_h * window_w, channels)
            windows = self.attn(windows, mask=mask).view(-1, window_h, window_w, channels)
            x = window_reverse(windows, self.window_size, padded_h, padded_w)
            if any(shift):
                x = torch.roll(x, shifts=shift, dims=(1, 2))
            return x[:, :height, :width, :].contiguous()

    OriginalWindowSwinBlock.__name__ = OriginalWindowSwinBlock.__qualname__ = "OriginalWindowSwinBlock"
    return OriginalWindowSwinBlock


def adapt_timm_swin(backbone: nn.Module) -> bool:
    """Makes a timm Swin (v1) inside `backbone` take any input size with the original window semantics: the patch
    embedding pads to the patch size instead of asserting 384 x 384, every block gets the model's window (12) and
    its original shift (half a window on odd blocks, whatever the stage's resolution). Returns whether it found one.
    """
    block_class = _timm_swin_block_class()
    if block_class is None:
        return False
    blocks = [m for m in backbone.modules() if type(m) is block_class]
    if not blocks:
        return False
    original_class = make_original_swin_block_class(block_class)
    window = max((tuple(b.attn.window_size) for b in blocks), key=lambda size: size[0] * size[1])
    for block in blocks:
        block.dynamic_mask = True  # no fixed-size mask buffer: the mask follows each input's padded size
        block.__class__ = original_class
        block.set_input_size(block.input_resolution, window, always_partition=True)
        block.register_buffer("attn_mask", None, persistent=False)  # timm's 384 x 384 mask, unused here
    for module in backbone.modules():
        if hasattr(module, "strict_img_size") and hasattr(module, "dynamic_img_pad"):
            module.strict_img_size = False
            module.dynamic_img_pad = True
    return True


# ---------------------------------------------------------------------------------------------------------------------
# Weights: timm's pretrained weights, and timm's initialisation of weights a checkpoint lacks
# ---------------------------------------------------------------------------------------------------------------------


def load_timm_backbone_weights(backbone: nn.Module, checkpoint_file: str | None = None) -> None:
    """Loads timm's pretrained weights (every parameter and BatchNorm statistic) into `backbone`, a transformers
    `TimmBackbone`, with a strict key match.

    Args:
        backbone: the model's `TimmBackbone` (its `config` names the timm model and its feature outputs).
        checkpoint_file: a local `.safetensors`/`.pth` file of that timm model; by default timm fetches the model's
            default pretrained weights (from the Hub cache, or the network).
    """
    import timm

    backbone_config = getattr(backbone, "config", None)
    if timm_model(backbone) is None or getattr(backbone_config, "backbone", None) is None:
        raise ValueError(
            f"pretrained backbone weights are timm's: the backbone is a {type(backbone).__name__}, not a timm "
            "backbone; load a transformers backbone with `AutoBackbone.from_pretrained` and assign it instead"
        )
    if checkpoint_file is not None and not Path(checkpoint_file).is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {checkpoint_file}")
    pretrained = timm.create_model(
        backbone_config.backbone,
        pretrained=True,
        features_only=backbone_config.features_only,
        out_indices=tuple(backbone_config.out_indices),
        in_chans=backbone_config.num_channels,
        output_stride=backbone_config.output_stride,
        pretrained_cfg_overlay={"file": str(checkpoint_file)} if checkpoint_file else None,
    )
    timm_model(backbone).load_state_dict(pretrained.state_dict(), strict=True)


def uninitialised_timm_tensors(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters and persistent buffers of a timm backbone that neither a checkpoint nor an initialisation has
    filled yet (transformers marks both with `_is_hf_initialized`), by state-dict name inside the timm model; empty
    for a transformers backbone, which initialises itself.

    Call it before transformers' `initialize_weights` marks every module it visits. Non-persistent buffers (Swin's
    relative position index, ...) are left to `TimmBackbone`'s own initialisation: no checkpoint holds them."""
    model = timm_model(backbone)
    if model is None:
        return {}
    persistent = set(model.state_dict(keep_vars=True))
    missing = {}
    for module_name, module in model.named_modules():
        if getattr(module, "_is_hf_initialized", False):
            continue
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            key = f"{module_name}.{name}" if module_name else name
            loaded = tensor is None or tensor.is_meta or getattr(tensor, "_is_hf_initialized", False)
            if not loaded and key in persistent:
                missing[key] = tensor
    return missing


@torch.no_grad()
def fill_from_fresh_timm_model(backbone: nn.Module, missing: dict[str, torch.Tensor]) -> None:
    """Fills `missing` (from `uninitialised_timm_tensors`) with the values of a freshly built timm model of the same
    architecture: timm's own initialisation, which `TimmBackbone._init_weights` (BatchNorm statistics only) lacks."""
    import timm

    if not missing:
        return
    backbone_config = backbone.config
    with torch.device("cpu"):
        fresh = timm.create_model(
            backbone_config.backbone,
            pretrained=False,
            features_only=backbone_config.features_only,
            in_chans=backbone_config.num_channels,
            out_indices=tuple(backbone_config.out_indices),
            output_stride=backbone_config.output_stride,
        )
    fresh_state = fresh.state_dict()
    unknown = sorted(set(missing) - set(fresh_state))
    if unknown:
        raise ValueError(
            f"cannot initialise timm backbone tensors {unknown}: a fresh {backbone_config.backbone!r} lacks them"
        )
    for name, tensor in missing.items():
        tensor.copy_(fresh_state[name])


def warn_unloaded_pretrained_backbone(config: PreTrainedConfig, backbone: nn.Module) -> None:
    """Warns when `config.use_pretrained_backbone` asks for pretrained weights that the constructor, which never
    downloads, has not loaded into the freshly built `backbone`. Silent under `from_pretrained` (built on the meta
    device: the checkpoint holds the backbone)."""
    if getattr(config, "use_pretrained_backbone", False) and not next(backbone.parameters()).is_meta:
        logger.warning(
            "use_pretrained_backbone=True, but a model constructor never loads weights (no network access while "
            "building): this backbone is randomly initialised. Build the model with its "
            "`from_pretrained_backbone(config)` classmethod or call `model.base_model.load_pretrained_backbone()`."
        )


class PretrainedBackboneMixin:
    """For every family's `PreTrainedModel`: where its backbone sits (`backbone_module_name`, inside
    `model.base_model`), the explicit step that loads timm's pretrained weights into it (`load_pretrained_backbone`,
    or `from_pretrained_backbone` for a new model), and timm's own activation checkpointing switched with
    transformers' (`gradient_checkpointing_enable`)."""

    # The backbone's name inside the base model: `get_submodule` path.
    backbone_module_name: str = "backbone"

    def backbone_module(self) -> nn.Module:
        """The backbone (transformers' backbone API) of this model, whichever head it carries."""
        return self.base_model.get_submodule(self.backbone_module_name)

    def load_pretrained_backbone(self, checkpoint_file: str | None = None) -> None:
        """Loads timm's pretrained weights (all parameters and BatchNorm statistics) into the backbone and records it
        in `config.use_pretrained_backbone`. The constructor never does this (see `from_pretrained_backbone`).

        Args:
            checkpoint_file: a local `.safetensors`/`.pth` file of the timm model; by default timm fetches the
                model's default pretrained weights (from the Hub cache, or the network).
        """
        load_timm_backbone_weights(self.backbone_module(), checkpoint_file)
        self.config.use_pretrained_backbone = True

    @classmethod
    def from_pretrained_backbone(cls, config: PreTrainedConfig, checkpoint_file: str | None = None) -> PreTrainedModel:
        """A new model of `config`: backbone from timm's pretrained (ImageNet) weights, the rest initialised as usual.

        Why a separate step: a constructor never touches the network or the Hub cache (transformers 5's rule too:
        `load_backbone` builds a random backbone and `use_pretrained_backbone` is no longer read there), so building
        from a config, `from_config` and `from_pretrained` stay offline and deterministic; this is the one call that
        fetches backbone weights. Afterwards `config.use_pretrained_backbone` is True: it records where the backbone
        started and is saved with the model (reloading reads the checkpoint, never timm's weights).

        Args:
            config: the model's config; its backbone must be a timm backbone.
            checkpoint_file: a local `.safetensors`/`.pth` file of the timm model instead of timm's download.
        """
        # The constructor warns about a requested but unloaded backbone; here the weights follow.
        config.use_pretrained_backbone = False
        model = cls(config)
        model.load_pretrained_backbone(checkpoint_file)
        return model

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Callable = checkpoint, every_n_layers: int = 1
    ) -> None:
        """transformers' switch (every module with a `gradient_checkpointing` flag: the families' layers, transformers
        backbones that support it), plus timm's own for a timm backbone."""
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func, every_n_layers)
        set_timm_gradient_checkpointing(self.backbone_module(), enable)


# ---------------------------------------------------------------------------------------------------------------------
# Freezing, as detectron2 fine-tunes a backbone: frozen BatchNorm and frozen leading stages (`FREEZE_AT`)
#
# Works on both kinds of backbone of transformers' backbone API: timm models (`TimmBackbone`) and transformers
# backbones with an `embedder`/`embeddings` stem and `encoder.stages`/`encoder.layers` (ResNet, Swin, ...). The norm
# layers stay `BatchNorm2d` (the weights load and save like unfrozen ones); freezing only keeps them in inference mode
# and takes their parameters out of training.
# ---------------------------------------------------------------------------------------------------------------------

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
    model = timm_model(backbone)
    if model is not None and hasattr(model, "feature_info"):
        return _timm_stem_and_stages(model)
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


__all__ = [
    "MAX_FROZEN_STAGES",
    "PYRAMID_STRIDES",
    "CheckpointedResNetStage",
    "PretrainedBackboneMixin",
    "adapt_timm_swin",
    "backbone_config_from_name",
    "backbone_stem_and_stages",
    "channels_first",
    "check_feature_strides",
    "check_pyramid_backbone",
    "fill_from_fresh_timm_model",
    "freeze_backbone",
    "frozen_modules",
    "keep_norms_frozen",
    "load_timm_backbone_weights",
    "make_resnet_stages_checkpointable",
    "returns_channels_last",
    "set_timm_gradient_checkpointing",
    "timm_backbone_config",
    "timm_model",
    "uninitialised_timm_tensors",
    "warn_unloaded_pretrained_backbone",
]
