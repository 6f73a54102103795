"""The FaPN `Trainer`: optimiser groups, per-batch streaming metrics, evaluation at label resolution, the FaPN
model card, and the callback that advances the augmentation epoch.

`fapn_hf.training.run.run_training` assembles these into a run; they also work in a hand-written `Trainer` setup.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from huggingface_hub import ModelCard
from transformers import EvalPrediction, Trainer, TrainerCallback

from ..families import family_of
from ..hub.cards import write_model_card
from ..inference.evaluation import predict_at_label_size
from ..inference.threads import ThreadGovernor
from ..labels import check_label_values
from ..modeling.label_checks import REDUCE_LABELS_HINT
from ..tasks.base import Task
from ..tasks.semantic.data import SIZE_KEYS, SegmentationDataset

# Normalisation layers by type (timm's BatchNormAct2d, LayerNorm2d, ... subclass these), as detectron2's optimiser
# builder finds them for WEIGHT_DECAY_NORM.
NORM_LAYER_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)


def multi_step_lr_factor(decay_steps: list[int], gamma: float, warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at step `step` (0-based) of detectron2's WarmupMultiStepLR: a linear warm-up from
    0.001 to 1 over `warmup_steps` (detectron2's WARMUP_FACTOR and "linear" method), times `gamma` once for each
    step of `decay_steps` already reached."""
    import bisect

    def factor(step: int) -> float:
        warmup = 1.0
        if step < warmup_steps:
            alpha = step / warmup_steps
            warmup = 0.001 * (1 - alpha) + alpha
        return warmup * gamma ** bisect.bisect_right(decay_steps, step)

    return factor


def parameter_groups(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float,
    backbone_lr_multiplier: float = 1.0,
    decay_norm_and_bias: bool = False,
    decay_bias: bool = False,
) -> list[dict[str, Any]]:
    """Optimiser groups of either model family: backbone vs. the rest (learning rate), decayed vs. not (weight decay).

    The backbone (`model.backbone_module()`) trains at `learning_rate * backbone_lr_multiplier`, the rest at
    `learning_rate` (the original MaskFormer's BACKBONE_MULTIPLIER). No weight decay goes to the parameters of
    normalisation layers (`NORM_LAYER_TYPES`) and embeddings (MaskFormer's query embeddings), the original's
    WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0, nor to other one-dimensional parameters (biases) unless
    `decay_bias` (the original MaskFormer decays them). `decay_norm_and_bias` decays everything.

    Returns the non-empty groups `{"params", "lr", "weight_decay"}`; frozen parameters are left out.
    """
    undecayed_types = (*NORM_LAYER_TYPES, torch.nn.Embedding)
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    seen: set[int] = set()  # a parameter shared by two modules goes into one group only
    backbone = {id(parameter) for parameter in model.backbone_module().parameters()}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            if isinstance(module, undecayed_types):
                decayed = decay_norm_and_bias
            else:
                decayed = decay_norm_and_bias or decay_bias or parameter.ndim > 1
            groups.setdefault((id(parameter) in backbone, decayed), []).append(parameter)
    return [
        {
            "params": params,
            "lr": learning_rate * (backbone_lr_multiplier if in_backbone else 1.0),
            "weight_decay": weight_decay if decayed else 0.0,
        }
        for (in_backbone, decayed), params in sorted(groups.items())
    ]


class EpochSetter(TrainerCallback):
    """Tells the training dataset the epoch, so its per-sample augmentation seeds change every epoch."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor((state.epoch or 0) + 1e-6))


class ThreadSetter(TrainerCallback):
    """Keeps PyTorch's CPU threads at `FaPNTrainingArguments.threads` during training: auto re-chooses the count from
    the load every `every` steps (`fapn_hf.inference.threads.ThreadGovernor`)."""

    def __init__(self, threads: str | int | None, every: int = 10) -> None:
        self.governor = ThreadGovernor(threads)
        self.every = every

    def on_train_begin(self, args, state, control, **kwargs):
        if not args.use_cpu and torch.cuda.is_available():
            self.governor = ThreadGovernor(None)  # training on a GPU: PyTorch's CPU threads are left alone
        self.governor.update()

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.governor.update()


def make_compute_metrics(metrics: Any, task: Task | None = None) -> Callable[..., dict[str, float]]:
    """A `compute_metrics` for `batch_eval_metrics=True`: accumulates confusion matrices batch by batch
    (`SegmentationMetrics`), or, for a task scored on post-processed predictions (`task.score_batch`), reports the
    metrics that `FaPNTrainer.prediction_step` fed (`FaPNTrainer(eval_metrics=metrics)`) once the last batch is in."""
    if task is not None and task.score_batch is not None:
        return _report_scored_metrics(metrics)

    def compute_metrics(prediction: EvalPrediction, compute_result: bool = False) -> dict[str, float]:
        predictions = torch.as_tensor(prediction.predictions)
        labels = torch.as_tensor(prediction.label_ids)
        # The Trainer pads labels across processes with -100: those pixels are not labelled.
        labels = torch.where(labels < 0, torch.full_like(labels, metrics.ignore_index), labels)
        metrics.update(predictions, labels)
        if not compute_result:
            return {}
        scores = metrics.compute()
        metrics.reset()
        per_class = scores.pop("per_class_iou", {})
        scores.update({f"iou_{name}": value for name, value in per_class.items()})
        return {key: float(value) for key, value in scores.items() if isinstance(value, (int, float))}

    return compute_metrics


def _report_scored_metrics(metrics: Any) -> Callable[..., dict[str, float]]:
    def compute_metrics(prediction: EvalPrediction, compute_result: bool = False) -> dict[str, float]:
        if not compute_result:
            return {}
        merge_across_processes(metrics)
        scores = metrics.compute()
        metrics.reset()
        return {key: float(value) for key, value in scores.items() if isinstance(value, (int, float))}

    return compute_metrics


def merge_across_processes(metrics: Any) -> None:
    """Under `torch.distributed`, every process's evaluation images are added to `metrics` on every process (each
    scored a shard of the evaluation set); a single process is left as it is. The metrics must have `merge`."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, metrics.state())
    metrics.reset()
    for state in gathered:
        metrics.merge(state)


class FaPNTrainer(Trainer):
    """The HF `Trainer` with FaPN's optimiser groups, per-batch class-map predictions for streaming metrics, a stop
    on a non-finite training loss, and FaPN's model card.

    Both model families train through it: a FaPN (`labels` in, its cross-entropy out) and MaskFormer + FaPN (the
    `MaskClassificationCollator`'s `mask_labels` / `class_labels` in, its Hungarian-matched loss out). Evaluation
    scores class maps at label resolution either way; it reports no loss for a mask-classification model (its loss
    needs mask targets at the image's resolution, which the label-resolution evaluation batches do not have).

    Args beyond the `Trainer`'s (all optional):
        eval_data_collator: collates the evaluation (and prediction) batches in place of `data_collator`, e.g. a
            `SegmentationCollator` (per-sample sizes, labels at label resolution) when training batches are mask
            targets.
        dataset_name: the data set trained on (`"demo"`, a folder, a Hub id), as the model card names it.
        training_summary: settings listed under the card's results (name -> value), e.g. the run's arguments.
        eval_metrics: the streaming metrics of a task scored on post-processed predictions (`Task.score_batch`:
            detection, instance and panoptic segmentation), fed by `prediction_step`; see `make_compute_metrics`.
    """

    def __init__(
        self,
        *args: Any,
        eval_data_collator: Callable[..., dict[str, Any]] | None = None,
        dataset_name: str | None = None,
        training_summary: dict[str, Any] | None = None,
        eval_metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator
        self.dataset_name = dataset_name
        self.training_summary = training_summary
        self.eval_metrics = eval_metrics
        self.task = family_of(self.model).task_for(self.model)

    @contextmanager
    def _collating_for_evaluation(self) -> Iterator[None]:
        """Builds data loaders with `eval_data_collator` (when set) instead of the training collator."""
        if self.eval_data_collator is None:
            yield
            return
        training_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            yield
        finally:
            self.data_collator = training_collator

    def get_eval_dataloader(self, eval_dataset=None):
        with self._collating_for_evaluation():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._collating_for_evaluation():
            return super().get_test_dataloader(test_dataset)

    def latest_eval_metrics(self) -> dict[str, float]:
        """The `eval_*` scores of the latest evaluation in the log history, or {} before the first evaluation."""
        for entry in reversed(self.state.log_history):
            scores = {key: value for key, value in entry.items() if key.startswith("eval_")}
            if scores:
                return scores
        return {}

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Writes the model's card (`fapn_hf.hub.cards.write_model_card`) as `README.md` in `args.output_dir`, in
        place of the Trainer's generic one; `push_to_hub` calls this before uploading, and only world process zero
        writes.

        The card's results (and its `model-index`) are the latest evaluation in the trainer's log history; its data
        set is `dataset` or the trainer's `dataset_name`; `training_summary` lists the settings. `model_name` titles
        it (default: the name of `output_dir`), `language`, `license`, `tags` and `finetuned_from` (as `base_model`)
        go into its metadata. The card sets its task (semantic segmentation) itself: `tasks`, `dataset_tags` and
        `dataset_args` raise a `ValueError` rather than being dropped.
        """
        unsupported = {"tasks": tasks, "dataset_tags": dataset_tags, "dataset_args": dataset_args}
        given = {name: value for name, value in unsupported.items() if value is not None}
        if given:
            raise ValueError(
                f"FaPN's model card does not take {given}: it sets the task itself and names the data set from "
                "`dataset` (or the trainer's dataset_name)"
            )
        if not self.is_world_process_zero():
            return
        if isinstance(dataset, list):
            dataset = ", ".join(dataset)
        card_options: dict[str, Any] = {} if model_name is None else {"model_name": model_name}
        path = write_model_card(
            self.args.output_dir,
            self.model.config,
            eval_metrics=self.latest_eval_metrics(),
            dataset_name=dataset or self.dataset_name,
            training_summary=self.training_summary,
            **card_options,
        )
        metadata = {"language": language, "license": license, "base_model": finetuned_from}
        if tags is None and all(value is None for value in metadata.values()):
            return
        card = ModelCard.load(path)
        for key, value in metadata.items():
            if value is not None:
                setattr(card.data, key, value)
        existing = list(card.data.tags or [])
        extra = [tags] if isinstance(tags, str) else list(tags or [])
        card.data.tags = existing + [tag for tag in extra if tag not in existing]
        card.save(path)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The Trainer would log around a nan/inf loss and carry on; a diverged model must not be saved as a result.
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"the training loss became {loss.item()} at step {self.state.global_step + 1} (epoch "
                f"{self.state.epoch or 0:.2f}); training stopped before the final model and its card are written. "
                "Lower the learning rate or check the data and labels."
            )
        return loss

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """detectron2's WarmupMultiStepLR where the recipe names `lr_decay_steps`; transformers' schedule otherwise."""
        steps = getattr(self.args, "lr_decay_steps", None)
        if not steps or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = self.optimizer if optimizer is None else optimizer
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            multi_step_lr_factor(steps, self.args.lr_decay_factor, self.args.get_warmup_steps(num_training_steps)),
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            model = self.model if model is None else model
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            groups = parameter_groups(
                model,
                self.args.learning_rate,
                self.args.weight_decay,
                getattr(self.args, "backbone_lr_multiplier", 1.0),
                getattr(self.args, "weight_decay_norm_and_bias", False),
                decay_bias=family_of(model).decay_bias,
            )
            optimizer_kwargs.pop("weight_decay", None)  # set per group
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, *args, **kwargs):
        # The collator's per-sample sizes serve evaluation; training batches are crops of one size.
        dropped = self.task.target_keys if self.task.score_batch is not None else SIZE_KEYS
        inputs = {key: value for key, value in inputs.items() if key not in dropped}
        labels, config = inputs.get("labels"), self.model.config
        if isinstance(labels, torch.Tensor):
            # Here, outside the model: a compiled forward (`torch_compile=True`) skips this host-side check.
            check_label_values(labels, config.num_labels, config.semantic_loss_ignore_index, hint=REDUCE_LABELS_HINT)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation at each label's original resolution (`fapn_hf.inference.evaluation.predict_at_label_size`):
        every image at its processed size through the model without padding, its scores
        (`fapn_hf.inference.predictor.model_scores`: logits, or a mask-classification model's semantic scores)
        resized to its label's size; class maps instead of scores are returned (num_labels times less to gather, and
        all the metrics need). The loss is the cross-entropy at label resolution for a family with an evaluation
        loss (`Family.eval_loss`), None otherwise.

        A task scored on post-processed predictions (`Task.score_batch`) runs `_scored_prediction_step` instead."""
        if self.task.score_batch is not None:
            return self._scored_prediction_step(model, inputs, prediction_loss_only)
        if "image_sizes" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        ignore = self.model.config.semantic_loss_ignore_index
        # A family whose class scores are not logits (MaskFormer + FaPN's) has no evaluation loss.
        loss_labels = labels if family_of(model).eval_loss else None
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, predictions = predict_at_label_size(
                model, inputs["pixel_values"], inputs["image_sizes"], inputs["label_sizes"], loss_labels, ignore
            )
        loss = None if loss is None else loss.detach()
        if prediction_loss_only:
            return loss, None, None
        predictions = predictions.to(torch.int32)
        if self.accelerator.num_processes > 1 and labels is not None:
            # Label sizes may differ between processes; the Trainer can only gather equal shapes.
            for dim in (1, 2):
                predictions = self.accelerator.pad_across_processes(predictions, dim=dim, pad_index=0)
                labels = self.accelerator.pad_across_processes(labels, dim=dim, pad_index=ignore)
        return loss, predictions, labels

    def _scored_prediction_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Detectors: the model in eval mode with the batch's labels gives its loss and detections; the task's
        `score_batch` post-processes them at each original image size (`targets`), and `eval_metrics` takes them
        here. The Trainer's gather works on equal-shape tensors only, so the per-image results never go through it:
        it gets a `(B, 1)` placeholder, which makes it call `compute_metrics` (`make_compute_metrics`)."""
        targets = inputs.get("targets")
        inputs = self._prepare_inputs({key: value for key, value in inputs.items() if key not in self.task.target_keys})
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)  # the evaluation loop has put the model in eval mode
        loss = outputs.loss.detach() if getattr(outputs, "loss", None) is not None else None
        if prediction_loss_only or self.eval_metrics is None:
            return loss, None, None
        if targets is None:
            raise ValueError(
                "evaluation batches of a detection task need `targets` (the original-size annotations): build the "
                "evaluation dataset with keep_targets=True (the default when random=False)"
            )
        self.eval_metrics.update(self.task.score_batch(self.processing_class, outputs, targets), targets)
        placeholder = torch.zeros(len(targets), 1, device=inputs["pixel_values"].device)
        return loss, placeholder, placeholder


__all__ = [
    "NORM_LAYER_TYPES",
    "EpochSetter",
    "FaPNTrainer",
    "make_compute_metrics",
    "merge_across_processes",
    "parameter_groups",
]
