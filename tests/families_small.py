"""Per registered family, a small build of one of its presets: the shared spec of the tests that run for every family
(tests/test_families.py, tests/test_input_table.py, tests/test_one_path.py, ...).

A family that is registered (`fapn_hf.FAMILIES`) but missing here fails `missing_families()`'s callers by name: a new
family adds its row to `SMALL` (a preset and the options, under the names every family shares, that make it small)
and to `SPREAD_CLASSES` (how its random head is made to predict several classes)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from fapn_hf import FAMILIES


class Small(NamedTuple):
    """A preset and the `ModelArguments` / `preset_config` options that shrink it (unpacks as `preset, options`)."""

    preset: str
    options: dict[str, Any]


SMALL: dict[str, Small] = {
    "fapn": Small("fapn-r50", {"backbone": "resnet18", "neck_channels": 64, "deformable_groups": 4}),
    "maskformer_fapn": Small(
        "maskformer-fapn-r101-cocostuff",
        {"backbone": "resnet18", "neck_channels": 64, "deformable_groups": 4, "num_queries": 6, "decoder_layers": 1},
    ),
}


def _spread_fapn(model: torch.nn.Module) -> None:
    torch.nn.init.normal_(model.decode_head.predictor.conv.weight, std=1.0)


def _spread_maskformer_fapn(model: torch.nn.Module) -> None:
    # Class scores are sum_q softmax(class_q) x sigmoid(mask_q): a random decoder gives every query nearly the same
    # output, hence one class everywhere. Far-apart query embeddings make the queries differ, wide class and mask
    # heads turn that into queries voting for different classes over different pixels.
    torch.nn.init.normal_(model.model.transformer_module.queries_embedder.weight, std=100.0)
    torch.nn.init.normal_(model.class_predictor.weight, std=3.0)
    for module in model.mask_embedder.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.2)


# Per family: widens a random model's class predictions in place so that it predicts several classes over an image
# (tests that compare class maps pixel by pixel must not compare constant maps).
SPREAD_CLASSES: dict[str, Callable[[torch.nn.Module], None]] = {
    "fapn": _spread_fapn,
    "maskformer_fapn": _spread_maskformer_fapn,
}


def missing_families() -> list[str]:
    """Registered families without a small build here (the tests that cover every family assert this is empty)."""
    return sorted(name for name in FAMILIES if name not in SMALL or name not in SPREAD_CLASSES)


def small_spec(name: str) -> Small:
    """The small build of family `name`; a `KeyError` that says what to add for a family missing here."""
    if name not in SMALL or name not in SPREAD_CLASSES:
        raise KeyError(f"family {name!r} is registered but has no small build: add it to tests/families_small.py")
    return SMALL[name]


def small_config(name: str, labels: Sequence[str] | str | None = None, **overrides: Any) -> Any:
    """The config of family `name`'s small build for `labels` (class names or a label-set name); `overrides` are
    further `preset_config` options or config fields."""
    preset, options = small_spec(name)
    return FAMILIES[name].preset_config(preset, None if labels is None else list(labels), **{**options, **overrides})


def small_model(name: str, labels: Sequence[str] | str | None = None, **overrides: Any) -> torch.nn.Module:
    """Family `name`'s small model with its head (`Family.head_class`), in eval mode, random weights."""
    return FAMILIES[name].head_class(small_config(name, labels, **overrides)).eval()


__all__ = ["SMALL", "SPREAD_CLASSES", "Small", "missing_families", "small_config", "small_model", "small_spec"]
