"""What a task is to the engines: how its data is read, augmented, batched and scored, and how a model card reports
it. One `Task` per task (semantic segmentation today; detection, instance and panoptic segmentation next), defined in
its own sub-package; families point at theirs (`Family.task`). How a task's predictions are drawn and written
(`fapn-predict`, the Space) joins this interface with the second task: today both are the semantic class map's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Task:
    """A task's pieces, as the training, evaluation, prediction, card and Space engines use them.

    Args:
        name: the task's name, e.g. `"semantic-segmentation"`.
        display_name: the model-index task name of a card, e.g. `"Semantic Segmentation"`.
        pipeline_tag: the Hub pipeline tag (`"image-segmentation"`, `"object-detection"`).
        card_tags: tags a model card of this task carries.
        card_metrics: `(metrics key, model-index metric type, display name)` for each metric a card reports.
        label_settings: `(dataset, labels, label_mapping, reduce_labels) -> settings` with `labels`,
            `label_mapping`, `reduce_labels`: what a data set brings (a downloaded folder layout's label set, raw-id
            mapping and reduction) where the arguments leave them unset; `ValueError` naming both on a contradiction.
        load_splits: `(dataset, **options) -> DatasetDict` with `train` and `validation` splits.
        check_samples: the bad-sample policy over one split: `(split, spec, policy, name) -> (split, report)`.
        label_spec: `(num_labels, ignore_index, label_mapping, reduce_labels) -> spec` of the labels samples carry.
        make_dataset: `(split, spec, augmentation, processor, **options) -> torch Dataset` of model inputs.
        train_augmentation: `(data_args) -> callable` applied to training samples.
        eval_collator: `(ignore_index) -> collator` of evaluation batches (the family's training collator may
            differ, `Family.train_collator`).
        make_metrics: `(num_labels, ignore_index, id2label) -> streaming metrics` with `update` and `compute`.
        score_batch: for a task scored on post-processed predictions (detection, instance and panoptic
            segmentation): `(processor, outputs, targets) -> per-image predictions` as `make_metrics(...).update`
            takes them with `targets`; None for a task scored on class maps (semantic segmentation).
        target_keys: evaluation batch keys the model does not take (what `score_batch` scores against).
    """

    name: str
    display_name: str
    pipeline_tag: str
    card_tags: tuple[str, ...]
    card_metrics: tuple[tuple[str, str, str], ...]
    label_settings: Callable[..., Any]
    load_splits: Callable[..., Any]
    check_samples: Callable[..., Any]
    label_spec: Callable[..., Any]
    make_dataset: Callable[..., Any]
    train_augmentation: Callable[[Any], Callable[..., Any]]
    eval_collator: Callable[[int], Callable[..., Any]]
    make_metrics: Callable[..., Any]
    score_batch: Callable[[Any, Any, list[dict[str, Any]]], list[dict[str, Any]]] | None = None
    target_keys: tuple[str, ...] = ()


@dataclass
class DataReport:
    """What a task's `check_samples` found in one split: the samples it skipped (index, reason) and how many it
    decoded (None: all of them; for a folder layout's split, the spot check's count). Tasks add their own counts
    (`counts`)."""

    split: str
    num_samples: int
    bad_samples: list[tuple[int, str]] = field(default_factory=list)
    decoded_samples: int | None = None

    @property
    def num_skipped(self) -> int:
        return len(self.bad_samples)

    def counts(self) -> dict[str, Any]:
        """The task's own counts over the decoded samples (e.g. labelled pixels, instances)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "num_samples": self.num_samples,
            "num_skipped": self.num_skipped,
            **self.counts(),
            "decoded_samples": self.num_samples if self.decoded_samples is None else self.decoded_samples,
            "skipped": [{"index": i, "reason": reason} for i, reason in self.bad_samples],
        }


__all__ = ["DataReport", "Task"]
