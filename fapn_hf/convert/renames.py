"""Explicit rename tables, original name -> package name, and the fragments of them that several families share.

A rule names its integer fields in braces: `backbone.bottom_up.res{stage}.{block}.conv{conv}.weight` ->
`fapn.backbone.encoder.stages.{stage-2}.layers.{block}.layer.{conv-1}.convolution.weight`. The package side may shift
an integer field (`{stage-2}`, `{level+1}`) or divide it exactly (`{layer/2}`); a rule whose result would be negative
or inexact does not apply. The placeholders of `PLACEHOLDER_PATTERNS` mean the same in every table; a family adds its
own (e.g. which heads a name may sit under) with `RenameTable.of(pairs, patterns={...})`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# What a `{name}` placeholder matches in an original name, in every family's table.
PLACEHOLDER_PATTERNS: dict[str, str] = {
    "stage": r"\d+",
    "block": r"\d+",
    "conv": r"\d+",
    "level": r"\d+",
    "layer": r"\d+",
    "param": r"weight|bias",
    "stat": r"weight|bias|running_mean|running_var",
}
_ORIGINAL_FIELD = re.compile(r"\{(\w+)\}")
_CONVERTED_FIELD = re.compile(r"\{(\w+)(?:([-+/])(\d+))?\}")


def _pattern_items(patterns: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = tuple(sorted(dict(patterns).items()))
    shadowing = [name for name, _ in items if name in PLACEHOLDER_PATTERNS]
    if shadowing:
        raise ValueError(f"placeholders {shadowing} are shared by every table (PLACEHOLDER_PATTERNS); use another name")
    return items


@dataclass(frozen=True)
class RenameRule:
    """`original` -> `converted`, e.g. `backbone.bottom_up.res{stage}.{block}.conv{conv}.weight` ->
    `fapn.backbone.encoder.stages.{stage-2}.layers.{block}.layer.{conv-1}.convolution.weight`.

    Args:
        original: the original name with `{placeholder}` fields (`PLACEHOLDER_PATTERNS` plus `patterns`).
        converted: the package name; each field must appear in `original`, optionally shifted or divided.
        patterns: the family's own placeholders, name -> regular expression (kept as sorted pairs, so that rules
            stay hashable).
    """

    original: str
    converted: str
    patterns: tuple[tuple[str, str], ...] = ()
    pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", _pattern_items(self.patterns))
        known = {**PLACEHOLDER_PATTERNS, **dict(self.patterns)}
        parts, last, names = [], 0, set()
        for match in _ORIGINAL_FIELD.finditer(self.original):
            name = match.group(1)
            if name not in known:
                raise ValueError(f"rule {self.original!r}: unknown placeholder {{{name}}}; known: {sorted(known)}")
            parts.append(re.escape(self.original[last : match.start()]))
            parts.append(f"(?P<{name}>{known[name]})")
            names.add(name)
            last = match.end()
        parts.append(re.escape(self.original[last:]))
        unbound = [m.group(1) for m in _CONVERTED_FIELD.finditer(self.converted) if m.group(1) not in names]
        if unbound:
            raise ValueError(f"rule {self.original!r} -> {self.converted!r}: {unbound} do not appear in the original")
        object.__setattr__(self, "pattern", re.compile("".join(parts)))

    def apply(self, name: str) -> str | None:
        """The package name of `name`, or None when the rule does not cover it."""
        match = self.pattern.fullmatch(name)
        if match is None:
            return None
        invalid = False

        def substitute(field_match: re.Match) -> str:
            nonlocal invalid
            value, operator, operand = match.group(field_match.group(1)), field_match.group(2), field_match.group(3)
            if operator is None:
                return value
            number, operand = int(value), int(operand)
            if operator == "/":
                invalid |= number % operand != 0
                number //= operand
            else:
                number += operand if operator == "+" else -operand
            invalid |= number < 0
            return str(number)

        converted = _CONVERTED_FIELD.sub(substitute, self.converted)
        return None if invalid else converted


@dataclass(frozen=True)
class RenameTable:
    """One model family's explicit renaming, original name -> package name."""

    rules: tuple[RenameRule, ...]

    @classmethod
    def of(cls, pairs: Sequence[tuple[str, str]], patterns: Mapping[str, str] | None = None) -> RenameTable:
        """The table of `(original, converted)` pairs; `patterns` are the family's own placeholders."""
        extra = _pattern_items(patterns or {})
        return cls(tuple(RenameRule(original, converted, extra) for original, converted in pairs))

    def __len__(self) -> int:
        return len(self.rules)

    def rename(self, names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
        """Maps every name a rule covers to its package name; returns the mapping and the names no rule covers."""
        mapping, unmatched = {}, []
        for name in names:
            targets = [(rule, target) for rule in self.rules if (target := rule.apply(name)) is not None]
            if len(targets) > 1:
                overlapping = ", ".join(rule.original for rule, _ in targets)
                raise RuntimeError(f"rename table bug: {name!r} matches several rules: {overlapping}")
            if targets:
                mapping[name] = targets[0][1]
            else:
                unmatched.append(name)
        return mapping, unmatched


# ---------------------------------------------------------------------------------------------------------------------
# Fragments: layouts of the original code that more than one family's checkpoints contain
# ---------------------------------------------------------------------------------------------------------------------


def detectron2_resnet_renames(
    prefix: str, *, stem: str, stem_norm: str, conv: str, conv_norm: str, shortcut: str, shortcut_norm: str
) -> list[tuple[str, str]]:
    """detectron2's ResNet under `prefix` (`build_resnet_backbone`: `stem.conv1`, then `res2`..`res5` of bottleneck
    blocks whose convs carry their norm as `.norm`, usually FrozenBN) -> the package names a family gives.

    The package names may use `{stage}` (2..5), `{block}`, `{conv}` (1..3) and `{stat}` (the norm's `weight`, `bias`,
    `running_mean`, `running_var`); `stem` and `shortcut` are conv weights, the `*_norm` names take `{stat}`. Whether
    the stride sits in the 1x1 (MSRA) or the 3x3 conv (torchvision) does not show in the names: the family's model
    must be built with the matching layout.
    """
    block = f"{prefix}.res{{stage}}.{{block}}"
    return [
        (f"{prefix}.stem.conv1.weight", stem),
        (f"{prefix}.stem.conv1.norm.{{stat}}", stem_norm),
        (f"{block}.conv{{conv}}.weight", conv),
        (f"{block}.conv{{conv}}.norm.{{stat}}", conv_norm),
        (f"{block}.shortcut.weight", shortcut),
        (f"{block}.shortcut.norm.{{stat}}", shortcut_norm),
    ]


def detectron2_resnet_to_transformers(prefix: str, backbone: str) -> list[tuple[str, str]]:
    """detectron2's MSRA ResNet under `prefix` -> transformers' `ResNetBackbone` at `backbone` (the model's path to
    it, e.g. `fapn.backbone`), built with `downsample_in_bottleneck=True`: the trunk of every converted model whose
    original used `build_resnet_backbone` with `STRIDE_IN_1X1`."""
    trunk, stem = f"{backbone}.encoder.stages.{{stage-2}}.layers.{{block}}", f"{backbone}.embedder.embedder"
    return detectron2_resnet_renames(
        prefix,
        stem=f"{stem}.convolution.weight",
        stem_norm=f"{stem}.normalization.{{stat}}",
        conv=f"{trunk}.layer.{{conv-1}}.convolution.weight",
        conv_norm=f"{trunk}.layer.{{conv-1}}.normalization.{{stat}}",
        shortcut=f"{trunk}.shortcut.convolution.weight",
        shortcut_norm=f"{trunk}.shortcut.normalization.{{stat}}",
    )


def feature_alignment_renames(original: str, converted: str, offset_norm: bool = False) -> list[tuple[str, str]]:
    """The authors' feature alignment module (FAM: `offset` conv, then `dcpack_L2`, a modulated deformable conv that
    predicts its offsets and mask with `conv_offset_mask`) at `original` -> the package's `FeatureAlignmentModule`
    at `converted`. With `offset_norm` the offset conv carries a norm (`offset.norm.{param}`, MaskFormer's decoder);
    FaPN's semantic neck has none. Both names may hold placeholders, e.g. `backbone.fan_align{level}` ->
    `fapn.neck.alignments.{level-2}`."""
    pairs = [(f"{original}.offset.weight", f"{converted}.offset_conv.conv.weight")]
    if offset_norm:
        pairs.append((f"{original}.offset.norm.{{param}}", f"{converted}.offset_conv.norm.{{param}}"))
    pairs += [
        (f"{original}.dcpack_L2.{{param}}", f"{converted}.deform_conv.{{param}}"),
        (f"{original}.dcpack_L2.conv_offset_mask.{{param}}", f"{converted}.deform_conv.offset_mask_conv.{{param}}"),
    ]
    return pairs


__all__ = [
    "PLACEHOLDER_PATTERNS",
    "RenameRule",
    "RenameTable",
    "detectron2_resnet_renames",
    "detectron2_resnet_to_transformers",
    "feature_alignment_renames",
]
