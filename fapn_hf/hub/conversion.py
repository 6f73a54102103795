"""Convert the authors' checkpoints into Hub-ready folders whose models give the original outputs.

    fapn-convert --checkpoint model_final.pth --model fapn-r50-pointrend-cityscapes --output_dir fapn-r50-pointrend
    python -m fapn_hf convert --checkpoint model_final.pkl --model fapn-r101-pointrend-cityscapes \
        --output_dir fapn-r101-pointrend

(The command line is `fapn_hf.cli.commands.convert_main`.)

`convert_checkpoint` reads the file safely, checks that it is the named model's architecture (else says what it looks
like, among every registered family's checkpoint signatures), renames, applies the family's transformations, fills
the model strictly (every original tensor consumed, every model tensor filled, shapes equal) and writes the same
folder training writes: safetensors, config with `auto_map`, processor, remote code, model card, plus
`conversion.json`, the record of where the weights come from (the only way reported figures enter a card).

The pieces live in the toolkit (`fapn_hf.convert`); each family's tables and released models live with the family
(`fapn_hf.families.<name>.convert`) and reach this module through the registry (`fapn_hf.families`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..convert import (
    CheckpointError,
    Converter,
    conversion_record,
    convert_state_dict,
    describe_checkpoint,
    read_checkpoint,
)
from ..families import FAMILIES, original_models
from .cards import CONVERSION_RECORD, weights_digest, write_model_card


def converters() -> list[Converter]:
    """Every registered family's converter, in registration order."""
    return [family.converter for family in FAMILIES.values() if family.converter is not None]


@dataclass
class ConversionResult:
    """What `convert_checkpoint` wrote, and the figures of the conversion."""

    output_dir: Path
    model_name: str
    num_rename_rules: int
    num_tensors: int
    checkpoint_sha256: str
    record: dict[str, Any]


def convert_checkpoint(
    checkpoint_path: str | Path,
    model_name: str,
    output_dir: str | Path,
    trust_pickle: bool = False,
    from_release: bool = True,
) -> ConversionResult:
    """Converts an original checkpoint into a Hub-ready folder (see the module docstring).

    Args:
        checkpoint_path: the detectron2 `.pth` or `.pkl` file.
        model_name: one of `fapn_hf.families.original_models()`, e.g. `"fapn-r50-pointrend-cityscapes"`.
        output_dir: the folder to write (created; files of the same names are replaced).
        trust_pickle: allow full pickle for a `.pth` that `weights_only` refuses (runs code from the file).
        from_release: the file is the authors' released checkpoint: the card quotes their reported figures. Pass
            False for weights trained by anyone else with the original code.
    """
    models = original_models()
    if model_name not in models:
        raise CheckpointError(f"unknown model {model_name!r}; available: {', '.join(models)}")
    model_spec = models[model_name]
    converter = model_spec.converter
    checkpoint = read_checkpoint(checkpoint_path, trust_pickle=trust_pickle)
    if not converter.recognise(checkpoint.keys):
        heuristics = (
            " It asks for detectron2's name matching heuristics."
            if checkpoint.extras.get("matching_heuristics")
            else ""
        )
        raise CheckpointError(
            f"{checkpoint.path} looks like {describe_checkpoint(checkpoint.keys, converters())}, not like "
            f"{converter.name}; {model_name} cannot be made from it.{heuristics}"
        )
    converter.check(model_spec, checkpoint)

    config = converter.build_config(model_spec)
    model = converter.build_model(config).eval()
    state, _ = convert_state_dict(converter, checkpoint, model)
    model.load_state_dict(state, strict=True)
    processor = converter.build_processor(model_spec, checkpoint)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    _check_saved_folder(output_dir, state, type(model))
    record = conversion_record(
        model_spec,
        checkpoint,
        num_tensors=len(state),
        from_release=from_release,
        weights_sha256=weights_digest(output_dir),
        package=f"fapn_hf {__version__}",
    )
    (output_dir / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    write_model_card(output_dir, config, model_name=model_spec.name)
    return ConversionResult(output_dir, model_name, len(converter.renames), len(state), checkpoint.sha256, record)


def _check_saved_folder(folder: Path, state: Mapping[str, torch.Tensor], model_class: type) -> None:
    """Reloads the written folder with `model_class.from_pretrained` and checks that every tensor came back bit for
    bit (through transformers' loading: tied tensors are stored once and some models rename keys on saving)."""
    saved = model_class.from_pretrained(folder).state_dict()
    differing = [name for name, tensor in state.items() if name not in saved or not torch.equal(saved[name], tensor)]
    if differing:
        raise RuntimeError(f"the weights written to {folder} differ from the converted ones: {differing[:10]}")


__all__ = ["ConversionResult", "convert_checkpoint", "converters"]
