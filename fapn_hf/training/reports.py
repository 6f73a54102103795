"""What a finished run leaves next to its model: `metrics.json`, `training_curves.png`, prediction overlays of
validation images (`predictions/`) and the model card (`README.md`).

This is a report step that `fapn_hf.training.run.run_training` calls after the final evaluation and `save_model`, not a
`TrainerCallback`: `on_train_end` fires inside `Trainer.train`, before that final evaluation and save, so a
callback would report the scores of the last in-training evaluation (or none) and write the card into a folder
that does not hold the final model yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..families import family_of
from ..inference.predictor import SegmentationPredictor
from ..labels import palette
from ..tasks.semantic.data import SegmentationDataset
from ..tasks.semantic.visualization import plot_training_curves, prediction_panel
from .trainer import FaPNTrainer


def write_run_report(
    trainer: FaPNTrainer, eval_dataset: SegmentationDataset, results: dict[str, Any], num_visualizations: int
) -> None:
    """Writes the run's report into `trainer.args.output_dir`; only world process zero writes, the others return.

    Args:
        trainer: the trainer after training, final evaluation and `save_model`.
        eval_dataset: the validation set the overlays are drawn from (its first `num_visualizations` images).
        results: what `metrics.json` holds (JSON-serialisable, other values written with `str`).
        num_visualizations: how many validation images get a prediction panel (0: none).
    """
    if not trainer.is_world_process_zero():
        return
    output_dir = Path(trainer.args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png")
    if family_of(trainer.model).predicts_pixel_classes:  # class-map overlays; detections have none drawn here yet
        write_prediction_overlays(trainer, eval_dataset, output_dir / "predictions", num_visualizations)
    trainer.create_model_card()


def write_prediction_overlays(
    trainer: FaPNTrainer, eval_dataset: SegmentationDataset, folder: Path, count: int
) -> list[Path]:
    """Image | ground truth | prediction panels of the first `count` validation images, as
    `folder/validation_NNN.png`; returns their paths. The model is back in training mode afterwards."""
    model = trainer.model
    colors = palette(model.config.num_labels, list(model.config.id2label.values()))
    predictor = SegmentationPredictor(model, trainer.processing_class)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(min(count, len(eval_dataset))):
        image, ground_truth = eval_dataset.load(index)
        path = folder / f"validation_{index:03d}.png"
        prediction_panel(image, predictor.predict(image), colors, ground_truth).save(path)
        paths.append(path)
    model.train()
    return paths


__all__ = ["write_prediction_overlays", "write_run_report"]
