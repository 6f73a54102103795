"""Train FaPN on a `datasets` segmentation set with the Hugging Face Trainer.

    python scripts/train.py recipes/demo.yaml                          # the built-in demo data, CPU friendly
    python scripts/train.py recipes/cityscapes_fapn_r50_pointrend.yaml --dataset /data/cityscapes-hf
    torchrun --nproc_per_node 8 scripts/train.py recipes/ade20k_fapn_r50.yaml
    python scripts/train.py recipes/demo.yaml --max_steps 50 --output_dir outputs/quick   # overrides
    python scripts/train.py recipes/demo.yaml --resume_from_checkpoint last              # after an interruption

The recipe (YAML or JSON) sets any field of ModelArguments, DataArguments and FaPNTrainingArguments (see
`fapn_hf/training.py` and `--help`); command-line flags override it. The run writes a Hub-ready model folder with
its model card, metrics.json, training_curves.png and prediction overlays to `output_dir`, which must be empty unless
the run resumes (`--resume_from_checkpoint last`) or `--overwrite_output_dir true` is given.
"""

from __future__ import annotations

import sys

from fapn_hf.training import parse_arguments, run_training


def main(argv: list[str] | None = None) -> int:
    try:
        model_args, data_args, training_args = parse_arguments(sys.argv[1:] if argv is None else argv)
        run = run_training(model_args, data_args, training_args)
    except (
        FileNotFoundError,
        FileExistsError,
        ValueError,
        FloatingPointError,
    ) as error:  # a diverged run names its step
        raise SystemExit(f"error: {error}") from error
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
