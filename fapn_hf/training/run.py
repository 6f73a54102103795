"""Training FaPN with the Hugging Face `Trainer`: `run_training` runs a whole recipe, `main` is the `fapn-train`
command (also `python -m fapn_hf.training`, which `torchrun -m` launches).

    fapn-train recipes/demo.yaml                                   # the built-in demo data, CPU friendly
    fapn-train recipes/cityscapes_fapn_r50_pointrend.yaml --dataset /data/cityscapes-hf
    torchrun --nproc_per_node 8 -m fapn_hf.training recipes/ade20k_fapn_r50.yaml
    fapn-train recipes/demo.yaml --max_steps 50 --crop_size 64 96 --output_dir outputs/quick   # overrides
    fapn-train recipes/demo.yaml --resume_from_checkpoint last     # after an interruption

The recipe (YAML or JSON) sets any field of `ModelArguments`, `DataArguments` and `FaPNTrainingArguments`
(`fapn_hf.training.args`, or `--help`); command-line flags override it. A run is the same on one CPU, one GPU or
many processes under `torchrun`/`accelerate launch`. The pieces live by job: `training_args` (arguments, recipes),
`builders` (labels, model, processor), `checkpoints` (resume and output-folder checks), `trainer` (the `Trainer`
subclass), `reports` (metrics.json, curves, overlays, card).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, set_seed

from ..families import family_of
from ..inference.evaluation import VALIDATION_DATA_KEY
from ..tasks.base import Task
from ..tasks.semantic.data import DataError
from .args import DataArguments, FaPNTrainingArguments, ModelArguments, parse_arguments
from .builders import (
    build_image_processor,
    build_model,
    resolve_family,
    resolve_label_settings,
    resolve_labels,
    task_to_train,
)
from .checkpoints import check_output_dir, resolve_resume_checkpoint
from .reports import write_run_report
from .trainer import EpochSetter, FaPNTrainer, ThreadSetter, make_compute_metrics


@dataclass
class TrainingRun:
    """What `run_training` produced."""

    output_dir: Path
    metrics: dict[str, Any]
    trainer: FaPNTrainer


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: FaPNTrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainingRun:
    """Trains and evaluates, then writes a Hub-ready folder and its report (`fapn_hf.training.reports`: `metrics.json`,
    `training_curves.png`, prediction overlays, the FaPN model card) to `training_args.output_dir`.

    Refuses a non-empty `output_dir` unless resuming or `overwrite_output_dir`, and an incomplete checkpoint to
    resume from; evaluation scores every image at its label's original resolution (`fapn_hf.inference.evaluation`).

    Every family takes this path: the preset's (or the saved model's) family (`fapn_hf.families`) says which task's
    data, augmentation, batches and metrics apply and how it trains (MaskFormer + FaPN: per-class masks from the
    family's collator, its own loss, no evaluation loss on its semantic scores)."""
    resume = resolve_resume_checkpoint(training_args.output_dir, training_args.resume_from_checkpoint)
    check_output_dir(training_args)
    set_seed(training_args.seed)
    # The family (of the preset, or of the saved model) says which task's data, augmentation and metrics apply.
    family = resolve_family(model_args)
    task = task_to_train(family, model_args)
    # A folder layout's labels, mapping and reduction, if unset; detection data also says how many are things.
    data_args, num_thing_labels = resolve_label_settings(data_args, task)
    label_names = resolve_labels(data_args)
    things = {"num_thing_labels": num_thing_labels} if num_thing_labels is not None else {}
    spec = task.label_spec(
        len(label_names), data_args.ignore_index, data_args.label_mapping, data_args.reduce_labels, **things
    )
    splits = task.load_splits(
        data_args.dataset,
        config_name=data_args.dataset_config,
        revision=data_args.dataset_revision,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        train_split=data_args.train_split,
        validation_split=data_args.validation_split,
        validation_fraction=data_args.validation_fraction,
        seed=training_args.seed,
        label_mapping=data_args.label_mapping,
        demo_options={
            "num_train": data_args.demo_train_samples,
            "num_validation": data_args.demo_validation_samples,
            "size": (data_args.demo_size, data_args.demo_size),
            "ignore_region": data_args.demo_ignore_region,
        },
    )
    reports = {}
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None:
            splits[split] = splits[split].select(range(min(limit, len(splits[split]))))
        if len(splits[split]) == 0:
            raise DataError(f"the {split} split of {data_args.dataset!r} is empty")
        if data_args.check_data:
            splits[split], reports[split] = task.check_samples(splits[split], spec, data_args.bad_sample_policy, split)

    model = build_model(model_args, label_names, data_args.ignore_index, num_thing_labels)
    processor = build_image_processor(data_args, model, model_args)
    augmentation = task.train_augmentation(data_args)
    train_dataset = task.make_dataset(splits["train"], spec, augmentation, processor, seed=training_args.seed)
    # No transform: the processor resizes the images, the labels keep their resolution, where they are scored.
    eval_dataset = task.make_dataset(splits["validation"], spec, None, processor, random=False)
    metrics = task.make_metrics(
        len(label_names), data_args.ignore_index, id2label=dict(enumerate(label_names)), **things
    )
    if data_args.validation_fraction is not None:
        fraction, seed = data_args.validation_fraction, training_args.seed
        validation = f"{fraction:.0%} of the {data_args.train_split!r} split held out (seed {seed})"
    else:
        validation = f"the data set's {data_args.validation_split!r} split"
    settings = {
        **asdict(model_args),
        "dataset": data_args.dataset,
        "validation": validation,
        "crop_size": data_args.crop_size,
    }
    # Evaluation batches are the task's (per-sample sizes, labels at label resolution, scored there); training
    # batches are the family's (MaskFormer + FaPN trains on per-class masks and classes).
    eval_collator = task.eval_collator(data_args.ignore_index)
    if family.train_collator is not None:
        train_collator = family.train_collator(len(label_names), data_args.ignore_index)
    else:  # a detection task's batches are the same in training and evaluation (lists of per-image targets)
        train_collator = eval_collator
    trainer = FaPNTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        processing_class=processor,
        compute_metrics=make_compute_metrics(metrics, task),
        eval_metrics=metrics if task.score_batch is not None else None,
        callbacks=[EpochSetter(train_dataset), ThreadSetter(training_args.threads), *callbacks],
        dataset_name=data_args.dataset,
        training_summary=settings,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    eval_metrics = trainer.evaluate()
    trainer.save_model(training_args.output_dir)

    results = {
        "train": train_result.metrics,
        "eval": eval_metrics,
        "data": {split: report.to_dict() for split, report in reports.items()},
        "model": {"preset": model_args.preset, "parameters": sum(p.numel() for p in model.parameters())},
        "dataset": data_args.dataset,
        "settings": settings,
        # What fapn-evaluate scores by default on this data set (`fapn_hf.inference.evaluation.recorded_hold_out`).
        VALIDATION_DATA_KEY: {
            "dataset": data_args.dataset,
            "train_split": data_args.train_split,
            "validation_split": None if data_args.validation_fraction is not None else data_args.validation_split,
            "validation_fraction": data_args.validation_fraction,
            "seed": training_args.seed,
        },
    }
    write_run_report(trainer, eval_dataset, results, data_args.num_visualizations)
    return TrainingRun(Path(training_args.output_dir), results, trainer)


def validation_line(scores: dict[str, Any], task: Task) -> str:
    """The one line `fapn-train` prints: mIoU, boundary mIoU and pixel accuracy (semantic segmentation), or the
    task's card metrics (box / mask AP, PQ)."""
    if task.score_batch is None:
        return (
            f"validation: mIoU {scores.get('eval_mean_iou', float('nan')):.4f}, boundary mIoU "
            f"{scores.get('eval_boundary_mean_iou', float('nan')):.4f}, pixel accuracy "
            f"{scores.get('eval_pixel_accuracy', float('nan')):.4f}"
        )
    parts = [f"{display} {scores.get('eval_' + key, float('nan')):.4f}" for key, _, display in task.card_metrics]
    return "validation: " + ", ".join(parts)


# Errors that mean "fix the recipe, data or folder" (a diverged run names its step): a one-line message, no traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, FloatingPointError)


def main(argv: Sequence[str] | None = None) -> int:
    """The `fapn-train` command: parses a recipe plus flags (`argv`, default `sys.argv[1:]`), trains, and prints the
    validation scores and where the outputs are. Returns the exit status (0); bad input exits with
    `SystemExit("error: ...")`."""
    try:
        model_args, data_args, training_args = parse_arguments(sys.argv[1:] if argv is None else argv)
        run = run_training(model_args, data_args, training_args)
    except USER_ERRORS as error:
        raise SystemExit(f"error: {error}") from error
    if run.trainer.is_world_process_zero():
        print(validation_line(run.metrics["eval"], family_of(run.trainer.model).task_for(run.trainer.model)))
        print(f"model, metrics.json, training_curves.png, predictions/: {run.output_dir}")
    return 0


__all__ = ["TrainingRun", "main", "run_training"]


if __name__ == "__main__":
    sys.exit(main())
