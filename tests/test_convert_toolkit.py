"""The conversion toolkit (`fapn_hf.convert`) on its own, without building a model: the import rules that keep it
family-free, the rename tables' placeholders, the stored input statistics, and what an unknown checkpoint looks like
given the registered families. The conversions themselves are tested end to end in test_convert_original.py and
test_convert_maskformer.py."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fapn_hf.convert import (
    Checkpoint,
    CheckpointError,
    RenameRule,
    RenameTable,
    describe_checkpoint,
    detectron2_resnet_renames,
    feature_alignment_renames,
    pixel_statistic,
)
from fapn_hf.families import FAMILIES, original_models
from fapn_hf.hub.conversion import converters

PACKAGE = Path(__file__).resolve().parents[1] / "fapn_hf"


def _package_imports(path: Path) -> set[str]:
    """Every `fapn_hf` module a file imports (relative imports resolved; function-level imports included)."""
    module_parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(module_parts[: len(module_parts) - node.level]) if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
    return {name for name in found if name == "fapn_hf" or name.startswith("fapn_hf.")}


def _within(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in allowed)


def test_toolkit_imports_only_the_shipped_code_and_the_labels():
    files = sorted((PACKAGE / "convert").glob("*.py"))
    assert {path.name for path in files} >= {"__init__.py", "checkpoint_io.py", "core.py", "renames.py"}
    allowed = ("fapn_hf.convert", "fapn_hf.modeling", "fapn_hf.labels")
    outside = {
        f"{path.name}: {module}" for path in files for module in _package_imports(path) if not _within(module, allowed)
    }
    assert not outside, sorted(outside)


def test_family_converters_import_the_toolkit_and_only_their_own_family():
    tables = sorted(PACKAGE.glob("families/*/convert.py"))
    assert {path.parent.name for path in tables} >= {"fapn", "maskformer_fapn"}
    for path in tables:
        own = f"fapn_hf.families.{path.parent.name}"
        imports = _package_imports(path)
        assert "fapn_hf.convert" in imports, path
        allowed = ("fapn_hf.convert", "fapn_hf.modeling", "fapn_hf.labels", own)
        assert {module for module in imports if not _within(module, allowed)} == set(), path


def test_registry_collects_each_familys_converter_and_models():
    collected = original_models()
    for family in FAMILIES.values():
        assert family.converter is not None, family.name
        for name, model in family.original_models.items():
            assert collected[name] is model and model.converter is family.converter
    assert sum(len(family.original_models) for family in FAMILIES.values()) == len(collected)
    assert converters() == [family.converter for family in FAMILIES.values()]


def test_original_model_settings_are_read_only():
    model = original_models()["fapn-r50-pointrend-cityscapes"]
    assert model.settings == {"depth": 50, "point_rend": True}
    with pytest.raises(TypeError):
        model.settings["depth"] = 101


def test_rename_rules_refuse_unknown_unbound_and_shadowing_placeholders():
    with pytest.raises(ValueError, match=r"unknown placeholder \{head\}"):
        RenameRule("{head}.predictor.{param}", "decode_head.predictor.{param}")
    table = RenameTable.of([("{head}.predictor.{param}", "decode_head.predictor.{param}")], patterns={"head": "h|g"})
    assert table.rename(["g.predictor.bias", "f.predictor.bias"]) == (
        {"g.predictor.bias": "decode_head.predictor.bias"},
        ["f.predictor.bias"],
    )
    with pytest.raises(ValueError, match=r"\['level'\] do not appear in the original"):
        RenameRule("p.{param}", "q.{level-2}.{param}")
    with pytest.raises(ValueError, match="shared by every table"):
        RenameTable.of([("a.{param}", "b.{param}")], patterns={"param": "weight"})
    assert hash(table.rules[0]) == hash(
        RenameRule("{head}.predictor.{param}", "decode_head.predictor.{param}", {"head": "h|g"})
    )


def test_fragments_rename_the_original_layouts():
    resnet = RenameTable.of(
        detectron2_resnet_renames(
            "backbone",
            stem="stem.weight",
            stem_norm="stem_bn.{stat}",
            conv="s{stage-2}.b{block}.c{conv}.weight",
            conv_norm="s{stage-2}.b{block}.n{conv}.{stat}",
            shortcut="s{stage-2}.b{block}.down.weight",
            shortcut_norm="s{stage-2}.b{block}.down_bn.{stat}",
        )
    )
    names = [
        "backbone.stem.conv1.norm.running_var",
        "backbone.res5.2.conv3.weight",
        "backbone.res3.0.shortcut.norm.bias",
    ]
    assert resnet.rename(names) == (
        {names[0]: "stem_bn.running_var", names[1]: "s3.b2.c3.weight", names[2]: "s1.b0.down_bn.bias"},
        [],
    )
    fam = RenameTable.of(feature_alignment_renames("align{level}", "alignments.{level-2}", offset_norm=True))
    names = [
        "align3.offset.weight",
        "align3.offset.norm.bias",
        "align4.dcpack_L2.weight",
        "align2.dcpack_L2.conv_offset_mask.bias",
    ]
    mapping, unmatched = fam.rename(names)
    assert not unmatched and list(mapping.values()) == [
        "alignments.1.offset_conv.conv.weight",
        "alignments.1.offset_conv.norm.bias",
        "alignments.2.deform_conv.weight",
        "alignments.0.deform_conv.offset_mask_conv.bias",
    ]
    assert len(feature_alignment_renames("a", "b")) == 3  # FaPN's semantic neck: no norm on the offset conv


def test_stored_pixel_statistics_keep_their_order_and_decimals(tmp_path):
    stored = {"pixel_mean": torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1), "pixel_std": torch.ones(4)}
    checkpoint = Checkpoint(tmp_path / "x.pth", stored, {}, "0")
    # The shortest decimals of the float32 values, in the stored order.
    assert pixel_statistic(checkpoint, "pixel_mean", (0.0, 0.0, 0.0), order="B, G, R") == [103.53, 116.28, 123.675]
    assert pixel_statistic(checkpoint, "absent", (1.0, 2.0, 3.0), order="B, G, R") == [1.0, 2.0, 3.0]
    with pytest.raises(CheckpointError, match=r"x.pth: pixel_std has 4 values, expected 3 \(R, G, B\)"):
        pixel_statistic(checkpoint, "pixel_std", (1.0, 1.0, 1.0), order="R, G, B")


def test_described_checkpoints_use_the_given_converters_signatures():
    keys = ["backbone.bottom_up.res2.0.conv1.weight", "backbone.fan_align3.offset.weight", "roi_heads.box.weight"]
    assert describe_checkpoint(keys, converters()).startswith("a detectron2 R-CNN model")  # a head before a neck
    keys = keys[:2]
    assert describe_checkpoint(keys, converters()) == "a FaPN semantic segmentation model (backbone.fan_align*)"
    # Without the FaPN family's signatures the same keys are only a detectron2 backbone's.
    assert describe_checkpoint(keys, []).startswith("an unknown layout")
    assert describe_checkpoint(["backbone.bottom_up.stem.conv1.weight", "res2.0.x"], []).startswith("a backbone alone")
    custom = replace(converters()[0], checkpoint_signatures=((("my_head.",), "a custom model"),))
    assert describe_checkpoint(["my_head.w", "res2.0.x"], [custom]) == "a custom model (my_head.*)"
