"""How every weight of every family starts: one rule, `InitWeightsMixin`, for the fresh model and for every tensor
that `from_pretrained` creates (a re-headed predictor, weights a checkpoint lacks, a missing backbone).

Layers carry their scheme as a tag set where they are built (`tag_init`): transformers 5 initialises leaf modules
(a conv, a norm), never the blocks that own them, and under `from_pretrained` only the leaves holding tensors the
checkpoint lacked (STACK_NOTES, "Initialisation of a model that lives outside transformers"); a tag on the leaf is
the one thing such a call can rely on. Weights of a timm backbone, which transformers' `TimmBackbone` does not
initialise, are filled from a fresh timm model (`backbone_utils.fill_from_fresh_timm_model`).

Part of the shipped kernel: imports only kernel modules (see `remote_code.KERNEL_MODULES`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as hf_init

from .backbone_utils import fill_from_fresh_timm_model, uninitialised_timm_tensors
from .deform_conv import ModulatedDeformConv2d

# detectron2's (and torch's) initialisation of each kind of layer, keyed by the name a layer is tagged with.
INIT_SCHEMES = ("xavier", "msra", "normal", "zeros", "linear_default", "unit_normal")


def tag_init(layer: nn.Module, scheme: str) -> nn.Module:
    """Records on `layer` (a conv, a linear layer, an embedding) the initialisation `InitWeightsMixin` gives it:

    - `"xavier"`: detectron2's c2_xavier_fill, kaiming-uniform with a = 1, i.e. U(+-sqrt(3 / fan_in));
    - `"msra"`: c2_msra_fill, kaiming-normal over fan_out with the ReLU gain, i.e. N(0, 2 / fan_out);
    - `"normal"`: N(0, 0.001^2) (PointRend's point-head predictor);
    - `"zeros"`: all zeros (offset/mask convs);
    - `"linear_default"`: `nn.Linear`'s own default, weight and bias U(+-1 / sqrt(fan_in));
    - `"unit_normal"`: N(0, 1) (`nn.Embedding`'s default: the original MaskFormer's object queries).

    Biases start at zero in every scheme but `"linear_default"`. Returns `layer`."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"Unknown init scheme {scheme!r}; expected one of {INIT_SCHEMES}")
    layer.init_scheme = scheme
    return layer


def _fan_in(weight: torch.Tensor) -> int:
    return weight.shape[1] * math.prod(weight.shape[2:])


def init_by_scheme(layer: nn.Module, scheme: str) -> None:
    """Initialises `layer`'s `weight` (and `bias`, when it has one) by `scheme` (see `tag_init`). transformers' guarded
    init functions leave tensors that `from_pretrained` loaded untouched."""
    weight, bias = layer.weight, getattr(layer, "bias", None)
    if scheme == "xavier":
        hf_init.kaiming_uniform_(weight, a=1)
    elif scheme == "msra":
        hf_init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
    elif scheme == "normal":
        hf_init.normal_(weight, std=0.001)
    elif scheme == "zeros":
        hf_init.zeros_(weight)
    elif scheme == "linear_default":
        bound = 1 / math.sqrt(_fan_in(weight))
        hf_init.uniform_(weight, -bound, bound)
        if bias is not None:
            hf_init.uniform_(bias, -bound, bound)
        return
    elif scheme == "unit_normal":
        hf_init.normal_(weight, mean=0.0, std=1.0)
    else:
        raise ValueError(f"Unknown init scheme {scheme!r}; expected one of {INIT_SCHEMES}")
    if bias is not None:
        hf_init.zeros_(bias)


def init_linear_default(linear: nn.Module) -> None:
    """`nn.Linear`'s own initialisation: weight and bias U(+-1 / sqrt(fan_in))."""
    init_by_scheme(linear, "linear_default")


class InitWeightsMixin:
    """Initialisation for every family's `PreTrainedModel` (with `PretrainedBackboneMixin`, which finds the backbone):
    the fresh model's and that of every tensor `from_pretrained` creates.

    - `_init_weights` (transformers calls it on each leaf module that holds an uninitialised tensor): a tagged layer
      by its scheme (`tag_init`); the deformable conv's weight by its own rule (U(+-1 / sqrt(fan_in)), bias 0);
      BatchNorm at weight 1, bias 0, statistics 0 and 1; anything else by the family's base class (transformers'
      rules: norms at 1 and 0, ...). Backbones are sub-models that transformers initialises with their own rules.
    - `initialize_weights`: transformers', plus the tensors of a timm backbone that a checkpoint lacks, which
      `TimmBackbone._init_weights` (BatchNorm statistics only) would leave as uninitialised memory: filled from a
      freshly built timm model of the same architecture (timm's own initialisation). A fresh backbone (its modules
      are marked initialised when it is built) and every loaded tensor are left alone.
    """

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        scheme = getattr(module, "init_scheme", None)
        if scheme is not None:
            init_by_scheme(module, scheme)
        elif isinstance(module, ModulatedDeformConv2d):
            module.reset_parameters()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            # transformers' rule for norms; MaskFormer's base class would draw BatchNorm weights N(0, init_std).
            PreTrainedModel._init_weights(self, module)
        else:
            super()._init_weights(module)

    def initialize_weights(self) -> None:
        missing = uninitialised_timm_tensors(self.backbone_module())
        super().initialize_weights()
        fill_from_fresh_timm_model(self.backbone_module(), missing)


__all__ = ["INIT_SCHEMES", "InitWeightsMixin", "init_by_scheme", "init_linear_default", "tag_init"]
