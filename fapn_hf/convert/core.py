"""What every family's conversion shares: the description of a converter (`Converter`) and of the released models it
makes (`OriginalModel`), the strict fill of a package model from an original checkpoint (`convert_state_dict`), the
provenance record (`conversion_record`) and what an unknown checkpoint looks like (`describe_checkpoint`).

Nothing here knows a family: each family's `families/<name>/convert.py` builds a `Converter` and its
`ORIGINAL_MODELS` from these pieces, and the registry (`fapn_hf.families`) collects them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from .checkpoint_io import Checkpoint, CheckpointError
from .renames import RenameTable

# (prefixes any of which marks the layout, description); in a list of signatures the first match wins.
CheckpointSignature = tuple[tuple[str, ...], str]


@dataclass(frozen=True)
class ReportedResult:
    """A figure the authors report for a released checkpoint (quoted on the card as reported, not measured)."""

    dataset: str
    split: str
    metric: str
    value: float
    source: str
    source_url: str


@dataclass(frozen=True)
class OriginalModel:
    """A checkpoint layout users name on the command line, with the original test-time settings.

    Args:
        name: the name on the command line, e.g. `"fapn-r50-pointrend-cityscapes"`.
        converter: the family's converter that makes it.
        description: one line for listings, e.g. `"PointRend + FaPN, ResNet-50 (MSRA), Cityscapes"`.
        labels: its label set (a `fapn_hf.labels` name).
        original_config: the authors' config file (or a description of the original setup).
        test_shortest_edge, test_longest_edge: the original test-time resize.
        evaluate_arguments: what `fapn-evaluate` needs besides `--model` to measure it on a local copy of the data.
        release_url, reported: the authors' download page and figures, when they released weights of it.
        settings: what only the family's converter reads (`check`, `build_config`), e.g. `{"depth": 50}`; read-only.
    """

    name: str
    converter: Converter
    description: str
    labels: str
    original_config: str
    test_shortest_edge: int
    test_longest_edge: int
    evaluate_arguments: str
    release_url: str | None = None
    reported: tuple[ReportedResult, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A frozen model whose settings could still be changed in place would not be frozen.
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))


@dataclass(frozen=True)
class Converter:
    """What a family of original models brings to the shared conversion: its rename table and how to build the
    package model, its processor and the tensors renaming alone cannot produce.

    Args:
        name: e.g. "detectron2 SemanticSegmentor + FaPN".
        renames: the explicit rename table.
        recognise: whether a state dict's names belong to this family.
        build_config: the package config of an `OriginalModel`.
        build_model: the package model of a config (randomly initialised; the conversion fills it).
        transform: `(converted tensors, checkpoint, model)` -> converted tensors, e.g. BGR -> RGB.
        processor_tensors: original names consumed by `build_processor` rather than renamed (e.g. `pixel_mean`).
        build_processor: `(original model, checkpoint)` -> the image processor reproducing the original input.
        check: `(original model, checkpoint)` -> None, raising `CheckpointError` when the checkpoint is another
            variant of the family than the one named (a clearer message than the strict check's key lists).
        checkpoint_signatures: key prefixes that mark a checkpoint of this family (or of the original architecture
            it converts), with a description, for `describe_checkpoint`.
    """

    name: str
    renames: RenameTable
    recognise: Callable[[Sequence[str]], bool]
    build_config: Callable[[OriginalModel], Any]
    build_model: Callable[[Any], torch.nn.Module]
    transform: Callable[[dict[str, torch.Tensor], Checkpoint, torch.nn.Module], dict[str, torch.Tensor]]
    processor_tensors: tuple[str, ...]
    build_processor: Callable[[OriginalModel, Checkpoint], Any]
    check: Callable[[OriginalModel, Checkpoint], None]
    checkpoint_signatures: tuple[CheckpointSignature, ...] = ()


# ---------------------------------------------------------------------------------------------------------------------
# Converting
# ---------------------------------------------------------------------------------------------------------------------


def _listing(items: Sequence[str], limit: int = 20) -> str:
    shown = "\n".join(f"    {item}" for item in items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return shown + more


def convert_state_dict(
    converter: Converter, checkpoint: Checkpoint, model: torch.nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state dict made from the checkpoint: renamed, transformed, cast to the model's dtypes, and
    strictly checked. Returns it with the original -> package name mapping.

    Raises `CheckpointError` listing every original tensor left over, every model tensor left empty and every
    shape that differs.
    """
    weight_names = [k for k in checkpoint.keys if k not in converter.processor_tensors]
    mapping, unmatched = converter.renames.rename(weight_names)
    converted = converter.transform({mapping[k]: checkpoint.tensors[k] for k in mapping}, checkpoint, model)
    expected = model.state_dict()
    original_of = {target: source for source, target in mapping.items()}
    unexpected = [f"{name} (no rename rule)" for name in unmatched]
    unexpected += [f"{original_of.get(n, n)} -> {n} (not in the model)" for n in converted if n not in expected]
    missing = [name for name in expected if name not in converted]
    misshaped = [
        f"{original_of.get(n, n)} -> {n}: checkpoint {tuple(converted[n].shape)}, model {tuple(expected[n].shape)}"
        for n in converted
        if n in expected and converted[n].shape != expected[n].shape
    ]
    problems = [
        (f"{len(unexpected)} original tensors not consumed", unexpected),
        (f"{len(missing)} model tensors not filled", missing),
        (f"{len(misshaped)} tensors with different shapes", misshaped),
    ]
    if any(items for _, items in problems):
        report = "\n".join(f"  {title}:\n{_listing(items)}" for title, items in problems if items)
        raise CheckpointError(f"{checkpoint.path} does not fit {converter.name}:\n{report}")
    state = {name: converted[name].to(dtype=expected[name].dtype) for name in expected}
    return state, mapping


def pixel_statistic(checkpoint: Checkpoint, name: str, default: Sequence[float], *, order: str) -> list[float]:
    """The three values of a per-channel input statistic (`pixel_mean`, `pixel_std`) as the checkpoint stores them
    (older detectron2 versions save them with the model), else `default`. `order` names the channels for the error
    message, e.g. `"B, G, R"` (detectron2's default) or `"R, G, B"` (MaskFormer's configs); the values come back in
    the stored order, unchanged.

    The values are the shortest decimals of the stored float32 numbers (123.675, not 123.67500305), the numbers the
    original config was written with.
    """
    if name not in checkpoint.tensors:
        return list(default)
    values = checkpoint.tensors[name].reshape(-1)
    if values.numel() != 3:
        raise CheckpointError(f"{checkpoint.path}: {name} has {values.numel()} values, expected 3 ({order})")
    return [float(np.format_float_positional(np.float32(v), unique=True)) for v in values.tolist()]


def conversion_record(
    model: OriginalModel,
    checkpoint: Checkpoint,
    *,
    num_tensors: int,
    from_release: bool,
    weights_sha256: Mapping[str, str],
    package: str,
) -> dict[str, Any]:
    """The provenance record written next to the weights (`conversion.json`).

    Args:
        model: the original model converted; checkpoint: the file it was made from.
        num_tensors: how many tensors the converted state dict holds.
        from_release: whether the file is the authors' release (only then are their URL and figures recorded).
        weights_sha256: sha256 of each written weights file, by file name: the record names the weights it
            describes, so a folder whose weights were re-trained or re-saved no longer matches it.
        package: the converting package and its version, e.g. `"fapn_hf 0.1.0"`.
    """
    return {
        "model": model.name,
        "description": model.description,
        "dataset": model.labels,
        "converted_from_release": from_release,
        "source": {
            "file": checkpoint.path.name,
            "sha256": checkpoint.sha256,
            "size_bytes": checkpoint.path.stat().st_size,
            "release_url": model.release_url if from_release else None,
            "original_config": model.original_config,
        },
        "reported": [vars(result) for result in model.reported] if from_release else [],
        "evaluate_arguments": model.evaluate_arguments,
        "converter": {
            "package": package,
            "family": model.converter.name,
            "rename_rules": len(model.converter.renames),
            "tensors": num_tensors,
        },
        "weights_sha256": dict(weights_sha256),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Recognising what a checkpoint holds
# ---------------------------------------------------------------------------------------------------------------------

# Whole detectron2 models no converter makes, known by their heads. Examined before the converters' signatures,
# because their keys may also hold a neck a converter knows (a Mask R-CNN + FaPN has backbone.fan_align*).
DETECTRON2_MODEL_SIGNATURES: tuple[CheckpointSignature, ...] = (
    (("roi_heads.", "proposal_generator."), "a detectron2 R-CNN model (Faster/Mask R-CNN or Panoptic FPN)"),
    (("head.cls_subnet.", "head.bbox_subnet."), "a detectron2 RetinaNet detector"),
)
# Parts of models: examined after the converters' signatures, which name whole models.
DETECTRON2_PART_SIGNATURES: tuple[CheckpointSignature, ...] = (
    (("backbone.fpn_lateral",), "a model with detectron2's plain FPN neck (no FaPN modules)"),
    (("stem.conv1.", "res2.0."), "a backbone alone (an ImageNet-pretrained detectron2 ResNet)"),
    (("conv1.weight", "layer1.0."), "a torchvision-style ResNet classifier"),
)


def describe_checkpoint(keys: Iterable[str], converters: Iterable[Converter]) -> str:
    """What a state dict looks like, e.g. "a detectron2 R-CNN model (roi_heads.*, proposal_generator.*)".

    The first matching signature wins, in this order: detectron2's whole models that no converter makes
    (`DETECTRON2_MODEL_SIGNATURES`), each of `converters`' `checkpoint_signatures` in turn, detectron2's parts
    (`DETECTRON2_PART_SIGNATURES`); then Caffe2's underscore names; else the first keys."""
    keys = list(keys)
    signatures = [
        *DETECTRON2_MODEL_SIGNATURES,
        *(signature for converter in converters for signature in converter.checkpoint_signatures),
        *DETECTRON2_PART_SIGNATURES,
    ]
    for prefixes, description in signatures:
        found = [p for p in prefixes if any(k.startswith(p) for k in keys)]
        if found:
            return f"{description} ({', '.join(p + '*' for p in found)})"
    if any(re.match(r"res\d_\d+_branch", k) or k.endswith("_w") for k in keys):
        return "a Caffe2/Detectron checkpoint with underscore names (e.g. res2_0_branch2a_w)"
    return f"an unknown layout (first keys: {', '.join(keys[:5])})"


__all__ = [
    "DETECTRON2_MODEL_SIGNATURES",
    "DETECTRON2_PART_SIGNATURES",
    "CheckpointSignature",
    "Converter",
    "OriginalModel",
    "ReportedResult",
    "conversion_record",
    "convert_state_dict",
    "describe_checkpoint",
    "pixel_statistic",
]
