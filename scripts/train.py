"""Train FaPN on a `datasets` segmentation set with the Hugging Face Trainer.

    python scripts/train.py recipes/demo.yaml                          # the built-in demo data, CPU friendly
    python scripts/train.py recipes/cityscapes_fapn_r50_pointrend.yaml --dataset /data/cityscapes-hf
    torchrun --nproc_per_node 8 scripts/train.py recipes/ade20k_fapn_r50.yaml
    python scripts/train.py recipes/demo.yaml --max_steps 50 --output_dir outputs/quick   # overrides

The recipe (YAML or JSON) sets any field of ModelArguments, DataArguments and FaPNTrainingArguments (see
`fapn_hf/training.py` and `--help`); command-line flags override it. The run writes a Hub-ready model folder with
its model card, metrics.json, training_curves.png and prediction overlays to `output_dir`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from fapn_hf.training import DataArguments, FaPNTrainingArguments, ModelArguments, run_training

ARGUMENT_CLASSES = (ModelArguments, DataArguments, FaPNTrainingArguments)


def load_recipe(path: Path) -> dict[str, Any]:
    """A recipe file as a flat dict of argument names; unknown names are an error that lists them."""
    if not path.is_file():
        raise SystemExit(f"recipe not found: {path}")
    text = path.read_text()
    recipe = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(recipe, dict):
        raise SystemExit(f"{path}: a recipe is a mapping of argument names to values")
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise SystemExit(f"{path}: unknown arguments {unknown}; see `python scripts/train.py --help`")
    return recipe


def parse(argv: list[str]) -> tuple[ModelArguments, DataArguments, FaPNTrainingArguments]:
    parser = HfArgumentParser(ARGUMENT_CLASSES, description=__doc__)
    if argv and not argv[0].startswith("-"):
        parser.set_defaults(**load_recipe(Path(argv[0])))
        argv = argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> int:
    model_args, data_args, training_args = parse(sys.argv[1:] if argv is None else argv)
    run = run_training(model_args, data_args, training_args)
    if run.trainer.is_world_process_zero():
        scores = run.metrics["eval"]
        print(
            f"validation: mIoU {scores.get('eval_mean_iou', float('nan')):.4f}, boundary mIoU "
            f"{scores.get('eval_boundary_mean_iou', float('nan')):.4f}, pixel accuracy "
            f"{scores.get('eval_pixel_accuracy', float('nan')):.4f}"
        )
        print(f"model, metrics.json, training_curves.png, predictions/: {run.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
