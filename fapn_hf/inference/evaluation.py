"""One evaluation path for the Trainer, `fapn-evaluate` and the notebooks.

Every image goes through the model's image processor (its resize rule), through the model without padding (padding
inside a batch would change a FaPN's output, whose feature selection pools over the whole map: images of one size run
as a batch, the others alone), and its logits are resized bilinearly to the label's original resolution, where it is
scored: the mmseg / detectron2 convention, and what `pipeline("image-segmentation")` returns.

`predict_at_label_size` is that step for a collated batch (the Trainer's evaluation); `evaluate` runs a
`SegmentationPredictor`, with optional test-time augmentation, over a data set's decoded samples (the command line
and the notebooks): the one evaluation loop outside the Trainer. Without augmentation both give the same class maps
(up to the floating-point summation order of a batch), hence the same metrics.

    from fapn_hf.inference.evaluation import evaluate
    scores = evaluate("outputs/demo", "demo", tta=TTAConfig(scales=(0.75, 1.0, 1.25), flip=True))
    scores["mean_iou"], scores["boundary_mean_iou"], scores["per_class_iou"]
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset

from ..tasks.semantic.data import (
    LabelSpec,
    MissingSplitError,
    SegmentationDataset,
    check_samples,
    load_segmentation_dataset,
)
from ..tasks.semantic.layouts import label_settings
from ..tasks.semantic.metrics import SegmentationMetrics
from .predictor import SegmentationPredictor, TTAConfig, logits_at_size


def predict_at_label_size(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    image_sizes: torch.Tensor,
    label_sizes: torch.Tensor,
    labels: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Class maps of a collated batch at each label's original size, and the loss there.

    Args:
        pixel_values: `(N, 3, h, w)`, sample `i` in its top-left `image_sizes[i]` (the rest is padding).
        image_sizes, label_sizes: `(N, 2)` unpadded (height, width) of each image and of its label map.
        labels: `(N, H, W)` class ids padded with `ignore_index`, or None.

    Returns:
        The cross-entropy over every labelled pixel of the batch (None without labels; 0 when none is labelled), and
        the predictions `(N, H, W)` int64, 0 outside each label's size. Images never see padding: those of one size
        (with labels of one size) run together, the others alone.
    """
    height, width = label_sizes.max(dim=0).values.tolist()
    predictions = torch.zeros(len(pixel_values), height, width, dtype=torch.long, device=pixel_values.device)
    loss_sum, labelled = pixel_values.new_zeros((), dtype=torch.float32), 0
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, sizes in enumerate(torch.cat([image_sizes, label_sizes], dim=1).tolist()):
        groups.setdefault(tuple(sizes), []).append(index)
    for (image_h, image_w, label_h, label_w), indices in groups.items():
        members = torch.tensor(indices, device=pixel_values.device)
        images = pixel_values[members, :, :image_h, :image_w]
        logits = logits_at_size(model, images, (label_h, label_w))
        predictions[members, :label_h, :label_w] = logits.argmax(dim=1)
        if labels is not None:
            target = labels[members, :label_h, :label_w].long()
            loss_sum = loss_sum + F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
            labelled += int((target != ignore_index).sum())
    loss = None if labels is None else loss_sum / max(labelled, 1)
    return loss, predictions


# Where a training run records its validation data (`fapn_hf.training.run.run_training`), in the model folder.
RUN_RECORD = "metrics.json"
VALIDATION_DATA_KEY = "validation_data"


@dataclass(frozen=True)
class HeldOut:
    """The validation images a training run held out of its training split, as it recorded them."""

    dataset: str
    train_split: str
    fraction: float
    seed: int
    record: Path

    @property
    def flags(self) -> str:
        return f"--validation_fraction {self.fraction} --seed {self.seed}"

    def describe(self) -> str:
        return f"{self.fraction:.0%} of {self.train_split!r} held out with seed {self.seed}"


def recorded_hold_out(model: Any, dataset: Any) -> HeldOut | None:
    """The hold-out that the run which wrote the model folder `model` made of `dataset` (its `metrics.json`), or
    None: another data set, a validation split of the source, a Hub model, or no record."""
    if not isinstance(model, (str, os.PathLike)) or not isinstance(dataset, (str, os.PathLike)):
        return None
    record = Path(model).expanduser() / RUN_RECORD
    try:
        data = json.loads(record.read_text()).get(VALIDATION_DATA_KEY) or {}
    except (OSError, ValueError, AttributeError):
        return None
    if data.get("validation_fraction") is None or str(data.get("dataset")) != str(dataset):
        return None
    return HeldOut(str(dataset), data["train_split"], float(data["validation_fraction"]), int(data["seed"]), record)


def evaluate(
    model: SegmentationPredictor | torch.nn.Module | str | os.PathLike,
    dataset: str | os.PathLike | Dataset | SegmentationDataset = "demo",
    *,
    image_processor: Any = None,
    split: str | None = None,
    validation_fraction: float | None = None,
    seed: int = 0,
    dataset_config: str | None = None,
    dataset_revision: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    label_mapping: str | dict[int, int] | None = None,
    reduce_labels: bool | None = None,
    demo_options: dict[str, Any] | None = None,
    max_samples: int | None = None,
    bad_sample_policy: Literal["fail", "skip"] = "fail",
    tta: TTAConfig | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Scores a model on a segmentation data set, each image at its label's original resolution.

    Args:
        model: a `SegmentationPredictor`, a model (with `image_processor`), or a model folder / Hub id (loaded with
            `device` and `trust_remote_code`).
        dataset: `"demo"`, a local folder or a Hub data set id (loaded by `load_segmentation_dataset` with
            `split`, `validation_fraction`, `seed`, `dataset_config`, `dataset_revision`, the columns and
            `demo_options`); a split already loaded that way (a `datasets.Dataset` with undecoded `"image"` and
            `"label"`); or a `SegmentationDataset` (e.g. `trainer.eval_dataset`), whose label spec and samples are
            used as they are.
        split: the source's split to evaluate (it must exist), unless `validation_fraction` holds a fraction of
            `"train"` out instead, as training's `--validation_fraction` does. None: `"validation"`, or, for a model
            folder whose training run held its validation images out of this same data set (`metrics.json`,
            `recorded_hold_out`), exactly those images.
        label_mapping, reduce_labels: how raw label values become class ids (`LabelSpec`), for the model's
            `num_labels` and `semantic_loss_ignore_index`. None: the data's own (a folder layout's, e.g. a
            Cityscapes folder's 34 -> 19 mapping; else none); a value that contradicts a folder layout, or a model
            whose class count differs from the layout's, raises `ValueError` naming both.
        max_samples: score only the first `max_samples` samples.
        bad_sample_policy: `"fail"` raises on an unreadable sample or out-of-range label, `"skip"` leaves it out.
        tta: test-time augmentation (scales, flip, sliding window); None: one view at scale 1.

    Returns:
        `mean_iou`, `mean_accuracy`, `pixel_accuracy`, the boundary IoUs and `boundary_mean_iou` (floats),
        `per_class_iou` (class name -> IoU), `num_images`, `split` (its description), `data` (what
        `check_samples` found, None for a `SegmentationDataset`), `tta` (`scales`, `flip`, `window`), `notes`
        (what a user should know about the choice of images, e.g. that they were used for training) and `seconds`.

    Raises `ValueError` for a missing split, bad samples under `"fail"`, or when no pixel is labelled (the scores
    would be NaN), `FileNotFoundError` for a missing model or data set.
    """
    started = time.perf_counter()
    held, notes, train_split = recorded_hold_out(model, dataset), [], "train"
    if held is not None and validation_fraction is None:
        if split is None:
            validation_fraction, seed, train_split = held.fraction, held.seed, held.train_split
            notes.append(f"scored the images the training run held out ({held.describe()}), as {held.record} records")
        elif split == held.train_split:
            notes.append(
                f"{split!r} holds the images this model was trained on ({held.describe()} for validation): these "
                f"scores are on training images; {held.flags} scores exactly the held-out ones"
            )
    split = "validation" if split is None else split
    predictor = _as_predictor(model, image_processor, device, trust_remote_code)
    config = predictor.model.config
    tta = tta or TTAConfig()
    report = None
    if isinstance(dataset, SegmentationDataset):
        split_name, spec, samples = split, dataset.spec, dataset
    else:
        source = None if isinstance(dataset, Dataset) else dataset
        mapping = label_mapping if isinstance(label_mapping, dict) else None
        settings = label_settings(
            source, None, None if mapping else label_mapping, reduce_labels, num_labels=config.num_labels
        )
        label_mapping = mapping or settings.label_mapping
        spec = LabelSpec(config.num_labels, config.semantic_loss_ignore_index, label_mapping, settings.reduce_labels)
        split_name = split
        if isinstance(dataset, Dataset):
            rows = dataset
        else:
            held_out = validation_fraction is not None
            try:
                rows = load_segmentation_dataset(
                    str(dataset),
                    config_name=dataset_config,
                    revision=dataset_revision,
                    image_column=image_column,
                    label_column=label_column,
                    train_split=train_split if held_out else None,
                    validation_split=split,
                    validation_fraction=validation_fraction,
                    seed=seed,
                    demo_options=demo_options,
                    label_mapping=settings.label_mapping,
                )["validation"]
            except MissingSplitError as error:
                raise MissingSplitError(_missing_split_advice(error), error.split, error.available) from None
            if held_out:
                split_name = f"{validation_fraction:.0%} of {train_split}, seed {seed}"
        if max_samples is not None:
            rows = rows.select(range(min(max_samples, len(rows))))
        rows, report = check_samples(rows, spec, bad_sample_policy, split_name)
        samples = SegmentationDataset(rows, spec, None, predictor.processor, random=False)
    count = len(samples) if max_samples is None else min(max_samples, len(samples))
    scores = _score(predictor, (samples.load(index) for index in range(count)), tta, spec.ignore_index)
    return {
        **scores,
        "split": split_name,
        "data": None if report is None else report.to_dict(),
        "tta": {"scales": list(tta.scales), "flip": tta.flip, "window": tta.window}
        | ({"short_sides": list(tta.short_sides), "max_size": tta.max_size} if tta.short_sides else {}),
        "notes": notes,
        "seconds": time.perf_counter() - started,
    }


def _missing_split_advice(error: MissingSplitError) -> str:
    """What to do when the split to score is missing: the hold-out a run made, never the training images."""
    # Never the training split: scoring it would score the images a model learnt from.
    others = [name for name in error.available if name not in (error.split, "train", "training")]
    advice = (
        f"the data set has no split {error.split!r}; it has {error.available}. If the model was trained on it with "
        "--validation_fraction F --seed S (its validation images held out of 'train'), pass the same two flags to "
        "score exactly those images; a model folder written by fapn-train records them and is scored on them "
        "without flags"
    )
    if others:
        advice += f". Otherwise name one of {others} with --split (not the split the model was trained on)"
    return advice


def _as_predictor(
    model: SegmentationPredictor | torch.nn.Module | str | os.PathLike,
    image_processor: Any,
    device: str | torch.device | None,
    trust_remote_code: bool,
) -> SegmentationPredictor:
    if isinstance(model, SegmentationPredictor):
        return model
    if isinstance(model, (str, os.PathLike)):
        return SegmentationPredictor.from_pretrained(str(model), device, trust_remote_code)
    if image_processor is None:
        raise ValueError(f"image_processor is required with a model object ({type(model).__name__})")
    return SegmentationPredictor(model, image_processor, device)


def _score(
    predictor: SegmentationPredictor,
    samples: Iterable[tuple[Any, np.ndarray]],
    tta: TTAConfig,
    ignore_index: int,
) -> dict[str, Any]:
    """Scores of `predictor` over `(image, labels)` pairs (labels `(H, W)` class ids at the image's resolution):
    mIoU, accuracies, boundary mIoU and `per_class_iou`, plus `num_images`. Raises `ValueError` when no pixel of the
    samples is labelled."""
    config = predictor.model.config
    metrics = SegmentationMetrics(config.num_labels, ignore_index, id2label=config.id2label)
    num_images, labelled = 0, 0
    for image, labels in samples:
        labels = np.asarray(labels)
        metrics.update(predictor.predict(image, tta), labels)
        num_images += 1
        labelled += int(np.count_nonzero(labels != ignore_index))
    if labelled == 0:
        raise ValueError(
            f"nothing to score: {num_images} images without a labelled pixel (all ignore_index={ignore_index})"
        )
    return {**metrics.compute(), "num_images": num_images}


def scored_on_post_processing(model: Any, trust_remote_code: bool = False) -> bool:
    """Whether `model` (a model, or a folder / Hub id) is evaluated on post-processed predictions
    (`Task.score_batch`: the detectors' COCO AP / PQ) rather than on class maps (`evaluate`)."""
    from ..families import family_of

    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoConfig

        from .sources import check_model_source

        check_model_source(str(model))  # a mistyped folder: "model not found ... did you mean", not transformers'
        config = AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    else:
        config = model.config
    family = family_of(config)
    return family.task_for(config).score_batch is not None


def evaluate_detector(
    model: torch.nn.Module | str | os.PathLike,
    dataset: str | os.PathLike = "demo",
    *,
    image_processor: Any = None,
    split: str | None = None,
    validation_fraction: float | None = None,
    seed: int = 0,
    dataset_config: str | None = None,
    dataset_revision: str | None = None,
    image_column: str = "image",
    label_column: str = "objects",
    demo_options: dict[str, Any] | None = None,
    max_samples: int | None = None,
    bad_sample_policy: Literal["fail", "skip"] = "fail",
    batch_size: int = 1,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """COCO box / mask AP (Faster / Mask R-CNN) or PQ / SQ / RQ (Panoptic FPN) of a detector on a data set's split,
    scored as the Trainer's evaluation does: each image through the model's processor (its resize), the detections
    post-processed at the image's original size by the task (`Task.score_batch`), and the task's metrics.

    Args:
        model: a detector, or its folder / Hub id (with its saved processor).
        dataset: `"demo"`, a COCO folder (instances or panoptic, by the model's task) or a `datasets` source
            (`fapn_hf.tasks.detection.data.load_detection_dataset`).
        split: the split to score (default `"validation"`); `validation_fraction`/`seed` hold a part of `train` out.
        max_samples: score only the first N images.
        batch_size: images per forward pass (zero padded to the largest; the model keeps each image's size).

    Returns:
        `{"scores": {metric: value}, "split", "num_images", "seconds", "task"}`; metric keys are the task's
        (`bbox_AP`, `segm_AP`, `PQ`, ... in [0, 1]).
    """
    from ..families import family_of

    start = time.perf_counter()
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoImageProcessor

        source = str(model)
        config_family = family_of(_load_config(source, trust_remote_code))
        image_processor = image_processor or AutoImageProcessor.from_pretrained(
            source, trust_remote_code=trust_remote_code
        )
        model = config_family.auto_class.from_pretrained(source, trust_remote_code=trust_remote_code)
    if image_processor is None:
        raise ValueError("evaluate_detector needs image_processor= with a model object (or pass the model's folder)")
    config = model.config
    task = family_of(config).task_for(config)
    if task.score_batch is None:
        raise ValueError(f"evaluate_detector scores detectors; {type(model).__name__} predicts {task.name} (evaluate)")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    num_labels, things = config.num_labels, config.num_thing_labels
    validation = split or "validation"
    splits = task.load_splits(
        str(dataset),
        config_name=dataset_config,
        revision=dataset_revision,
        image_column=image_column,
        label_column=label_column,
        train_split="train" if validation_fraction is not None else None,
        validation_split=validation,
        validation_fraction=validation_fraction,
        seed=seed,
        demo_options=demo_options,
    )
    samples = splits["validation"]
    if max_samples is not None:
        samples = samples.select(range(min(max_samples, len(samples))))
    kind = {"num_thing_labels": things} if num_labels != things else {}
    spec = task.label_spec(num_labels, getattr(config, "semantic_loss_ignore_index", 255), **kind)
    samples, report = task.check_samples(samples, spec, bad_sample_policy, validation)
    data = task.make_dataset(samples, spec, None, image_processor, random=False)
    collate = task.eval_collator(spec.ignore_index)
    metrics = task.make_metrics(num_labels, spec.ignore_index, id2label=dict(config.id2label), **kind)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, collate_fn=collate)
    with torch.no_grad():
        for batch in loader:
            targets = batch["targets"]
            outputs = model(pixel_values=batch["pixel_values"].to(device), image_sizes=batch["image_sizes"].to(device))
            metrics.update(task.score_batch(image_processor, outputs, targets), targets)
    scores = metrics.compute()
    return {
        "scores": {key: float(value) for key, value in scores.items()},
        "split": validation if validation_fraction is None else f"{validation_fraction:.0%} of train (seed {seed})",
        "num_images": len(data),
        "seconds": time.perf_counter() - start,
        "task": task.name,
        "data": report.to_dict(),
    }


def _load_config(source: str, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)


__all__ = [
    "evaluate_detector",
    "scored_on_post_processing",
    "RUN_RECORD",
    "VALIDATION_DATA_KEY",
    "HeldOut",
    "evaluate",
    "predict_at_label_size",
    "recorded_hold_out",
]
