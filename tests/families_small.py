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
    "fapn_rcnn": Small("fapn-mask-rcnn-demo", {"backbone": "resnet18", "neck_channels": 64, "deformable_groups": 4}),
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


# The families whose models give per-pixel class scores (`Family.predicts_pixel_classes`): the semantic engines'
# tests (predictor, evaluation, Space, input table) run for each of them.
PIXEL_CLASS_FAMILIES = sorted(name for name, family in FAMILIES.items() if family.predicts_pixel_classes)


def missing_families() -> list[str]:
    """Registered families without a small build here (the tests that cover every family assert this is empty): a
    family needs a `SMALL` row, and a `SPREAD_CLASSES` rule when it predicts per-pixel classes."""
    return sorted(
        name for name in FAMILIES if name not in SMALL or (name in PIXEL_CLASS_FAMILIES and name not in SPREAD_CLASSES)
    )


def small_spec(name: str) -> Small:
    """The small build of family `name`; a `KeyError` that says what to add for a family missing here."""
    if name in missing_families():
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


def _detector_training_inputs(pixel_values: torch.Tensor) -> dict[str, Any]:
    # One box and its mask per image (Mask R-CNN's small build), in pixel_values' pixels.
    height, width = pixel_values.shape[-2:]
    masks = torch.zeros(1, height, width, dtype=torch.uint8)
    masks[:, 1 : height // 2, 1 : width // 2] = 1
    box = torch.tensor([[1.0, 1.0, width / 2, height / 2]])
    label = {"boxes": box, "class_labels": torch.tensor([0]), "masks": masks}
    return {"labels": [dict(label) for _ in range(len(pixel_values))]}


# Per family that needs more than `pixel_values` in training mode: the further inputs of a training forward.
TRAINING_INPUTS: dict[str, Callable[[torch.Tensor], dict[str, Any]]] = {"fapn_rcnn": _detector_training_inputs}


def training_inputs(name: str, pixel_values: torch.Tensor) -> dict[str, Any]:
    """The inputs of a training forward of family `name`'s small model on `pixel_values`."""
    return {"pixel_values": pixel_values, **TRAINING_INPUTS.get(name, lambda _: {})(pixel_values)}


def output_signature(name: str, model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """One tensor that a model's eval forward determines, to compare two runs: the per-pixel class scores
    (`Family.class_scores`) of a pixel-class family; a detector's feature pyramid (p2..p6, which every weight of the
    backbone and neck shapes) with its detections' scores (random heads mostly detect nothing)."""
    family = FAMILIES[name]
    if family.predicts_pixel_classes:
        return family.class_scores(model(pixel_values=pixel_values))
    outputs = model(pixel_values=pixel_values, output_hidden_states=True)
    return torch.cat([*(level.flatten() for level in outputs.hidden_states), outputs.scores.flatten()])


__all__ = [
    "PIXEL_CLASS_FAMILIES",
    "SMALL",
    "SPREAD_CLASSES",
    "TRAINING_INPUTS",
    "output_signature",
    "training_inputs",
    "Small",
    "missing_families",
    "small_config",
    "small_model",
    "small_spec",
]
