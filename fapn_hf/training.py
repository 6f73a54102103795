"""Training FaPN with the Hugging Face `Trainer`: arguments, optimiser groups, streaming metrics and run outputs.

`run_training(model_args, data_args, training_args)` is the whole recipe; `scripts/train.py` parses a YAML/JSON
recipe plus command-line overrides into those three dataclasses. It runs the same on one CPU, one GPU or many
processes under `torchrun`/`accelerate launch`.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForSemanticSegmentation,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from .data import (
    BAD_SAMPLE_POLICIES,
    SIZE_KEYS,
    DataError,
    LabelSpec,
    SegmentationCollator,
    SegmentationDataset,
    check_samples,
    load_segmentation_dataset,
)
from .evaluation import predict_at_label_size
from .image_processing_fapn import FaPNImageProcessor
from .inference import check_model_source, model_not_found_error
from .labels import check_label_values, label_maps, palette
from .metrics import SegmentationMetrics
from .modeling_fapn import FaPNForSemanticSegmentation
from .presets import PRESETS, preset_config
from .transforms import TrainAugmentation, parse_size

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """Which model to train: a preset (with optional overrides) or an existing FaPN folder / Hub id."""

    preset: str = field(default="fapn-r50", metadata={"help": f"model preset: {', '.join(PRESETS)}"})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "fine-tune a saved FaPN (folder or Hub id) instead of building a preset"}
    )
    backbone: str | None = field(default=None, metadata={"help": "timm backbone name replacing the preset's"})
    pretrained_backbone: bool = field(default=False, metadata={"help": "start from timm's ImageNet weights"})
    use_fam: bool | None = field(default=None, metadata={"help": "override the preset's feature alignment switch"})
    use_fsm: bool | None = field(default=None, metadata={"help": "override the preset's feature selection switch"})
    use_point_rend: bool | None = field(default=None, metadata={"help": "override the preset's PointRend switch"})
    neck_channels: int | None = field(default=None, metadata={"help": "pyramid width D (paper: 256)"})
    head_channels: int | None = field(default=None, metadata={"help": "semantic head width (paper: 128)"})
    deformable_groups: int | None = field(default=None, metadata={"help": "FAM deformable groups (paper: 8)"})
    freeze_backbone_norm: bool = field(
        default=True, metadata={"help": "freeze the backbone's BatchNorm statistics and affine terms, as detectron2"}
    )
    freeze_backbone_stages: int | None = field(
        default=None,
        metadata={"help": "detectron2's FREEZE_AT: 0 none, 1 stem, 2 stem + res2, ... 5 all (default: the model's)"},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "allow remote code for model_name_or_path"})


@dataclass
class DataArguments:
    """Where the data comes from, its label map, and the augmentation of the paper's recipes."""

    dataset: str = field(default="demo", metadata={"help": "'demo', a local folder, or a Hub data set id"})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub data set configuration name"})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub data set revision"})
    image_column: str = "image"
    label_column: str = "label"
    train_split: str = "train"
    validation_split: str = "validation"
    validation_fraction: float | None = field(
        default=None,
        metadata={"help": "hold this fraction of train_split out as the validation set (only when set)"},
    )
    labels: str | None = field(
        default=None, metadata={"help": "'cityscapes', 'ade20k' or comma-separated class names (demo: built in)"}
    )
    label_mapping: str | None = field(default=None, metadata={"help": "raw id mapping, e.g. 'cityscapes' (34 -> 19)"})
    reduce_labels: bool = field(default=False, metadata={"help": "0 -> ignore, others minus 1 (ADE20K)"})
    ignore_index: int = 255
    crop_size: str = field(default="512x1024", metadata={"help": "training crop, HxW"})
    scale_range: str = field(default="0.5,2.0", metadata={"help": "random resize factors, min,max"})
    cat_max_ratio: float = field(default=0.75, metadata={"help": "max share of one class in a crop (1 = off)"})
    hflip_probability: float = 0.5
    photometric_distortion: bool = True
    eval_shortest_edge: int | None = field(
        default=None,
        metadata={"help": "the processor's inference resize (None: keep the size); scores stay at label resolution"},
    )
    eval_longest_edge: int | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    check_data: bool = field(default=True, metadata={"help": "decode and validate every sample before training"})
    bad_sample_policy: str = field(default="fail", metadata={"help": f"one of {BAD_SAMPLE_POLICIES}"})
    demo_train_samples: int = 192
    demo_validation_samples: int = 48
    demo_size: int = 128
    demo_ignore_region: bool = True
    num_visualizations: int = field(default=4, metadata={"help": "validation overlays written at the end"})

    def __post_init__(self) -> None:
        if self.bad_sample_policy not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"bad_sample_policy must be one of {BAD_SAMPLE_POLICIES}, got {self.bad_sample_policy!r}")
        self.crop_hw  # noqa: B018  (validates the format early)
        self.scale_bounds  # noqa: B018

    @property
    def crop_hw(self) -> tuple[int, int]:
        return parse_size(self.crop_size)

    @property
    def scale_bounds(self) -> tuple[float, float]:
        try:
            low, high = (float(v) for v in self.scale_range.split(","))
        except ValueError as error:
            raise ValueError(f"scale_range must look like 0.5,2.0, got {self.scale_range!r}") from error
        return low, high


@dataclass
class FaPNTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the optimiser options of the FaPN recipes; defaults suit semantic segmentation."""

    backbone_lr_multiplier: float = field(default=1.0, metadata={"help": "backbone learning rate = lr * this"})
    weight_decay_norm_and_bias: bool = field(
        default=False, metadata={"help": "also decay norm weights and biases (off: they get no weight decay)"}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "train into a non-empty output_dir (files are replaced as they are written)"}
    )
    # The dataset yields exactly the model's inputs, and metrics stream per batch.
    remove_unused_columns: bool = False
    batch_eval_metrics: bool = True

    def __post_init__(self) -> None:
        # transformers only sets up multi-process training on a machine without an accelerator when `use_cpu` is
        # on; without it every torchrun process would silently train alone.
        launched_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if launched_distributed and not self.use_cpu and not _has_accelerator():
            logger.info("no accelerator found: distributed training on the CPU (use_cpu=True, gloo)")
            self.use_cpu = True
        super().__post_init__()


def _has_accelerator() -> bool:
    return (
        torch.cuda.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
        or (torch.backends.mps.is_available())
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, FaPNTrainingArguments)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON recipe as a flat dict of argument names; unknown names raise a `ValueError` listing them."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    text = path.read_text()
    recipe = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a mapping of argument names to values")
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}
    unknown = sorted(set(recipe) - known)
    if unknown:
        guesses = {name: difflib.get_close_matches(name, known, n=1) for name in unknown}
        hints = "".join(f"; {name!r}: did you mean {match[0]!r}?" for name, match in guesses.items() if match)
        raise ValueError(f"{path}: unknown arguments {unknown}{hints}; see `python scripts/train.py --help`")
    return recipe


def parse_arguments(
    argv: Sequence[str], recipe: str | Path | None = None, **overrides: Any
) -> tuple[ModelArguments, DataArguments, FaPNTrainingArguments]:
    """The three argument dataclasses from a recipe, then `overrides`, then command-line flags `argv` (last wins).

    A first element of `argv` that is not a flag is taken as the recipe path.
    """
    from transformers import HfArgumentParser

    argv = list(argv)
    if recipe is None and argv and not argv[0].startswith("-"):
        recipe, argv = argv[0], argv[1:]
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    parser.set_defaults(**{**(load_recipe(recipe) if recipe is not None else {}), **overrides})
    return parser.parse_args_into_dataclasses(args=argv)


# ---------------------------------------------------------------------------------------------------------------------
# Trainer pieces
# ---------------------------------------------------------------------------------------------------------------------


def parameter_groups(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float,
    backbone_lr_multiplier: float = 1.0,
    decay_norm_and_bias: bool = False,
) -> list[dict[str, Any]]:
    """Optimiser groups: backbone vs. the rest (learning rate), and weights vs. norms/biases (weight decay).

    Parameters with one dimension (biases, norm scales and shifts) get no weight decay unless
    `decay_norm_and_bias`.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        in_backbone = ".backbone." in f".{name}"
        decayed = decay_norm_and_bias or parameter.ndim > 1
        groups.setdefault((in_backbone, decayed), []).append(parameter)
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


def make_compute_metrics(metrics: SegmentationMetrics) -> Callable[..., dict[str, float]]:
    """A `compute_metrics` for `batch_eval_metrics=True`: accumulates confusion matrices batch by batch."""

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


class FaPNTrainer(Trainer):
    """The HF `Trainer` with FaPN's optimiser groups, per-batch class-map predictions for streaming metrics, and a
    stop on a non-finite training loss."""

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
            )
            optimizer_kwargs.pop("weight_decay", None)  # set per group
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, *args, **kwargs):
        # The collator's per-sample sizes serve evaluation; training batches are crops of one size.
        inputs = {key: value for key, value in inputs.items() if key not in SIZE_KEYS}
        labels, config = inputs.get("labels"), self.model.config
        if isinstance(labels, torch.Tensor):
            # Here, outside the model: a compiled forward (`torch_compile=True`) skips this host-side check.
            check_label_values(labels, config.num_labels, config.semantic_loss_ignore_index)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation at each label's original resolution (`fapn_hf.evaluation.predict_at_label_size`): every image
        at its processed size through the model without padding, logits resized to its label's size; class maps
        instead of logits are returned (num_labels times less to gather, and all the metrics need)."""
        if "image_sizes" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        ignore = self.model.config.semantic_loss_ignore_index
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, predictions = predict_at_label_size(
                model, inputs["pixel_values"], inputs["image_sizes"], inputs["label_sizes"], labels, ignore
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


# ---------------------------------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------------------------------


def resolve_labels(data_args: DataArguments) -> list[str]:
    """Class names: the `labels` argument, or the demo set's built-in ones."""
    if data_args.labels is None:
        if data_args.dataset != "demo":
            raise ValueError("pass `labels` ('cityscapes', 'ade20k' or comma-separated class names) for this data set")
        from .demo_data import DEMO_LABELS

        return list(DEMO_LABELS)
    if "," in data_args.labels:
        return [name.strip() for name in data_args.labels.split(",") if name.strip()]
    from .labels import LABEL_SETS

    if data_args.labels not in LABEL_SETS:
        raise ValueError(f"unknown label set {data_args.labels!r}; use {sorted(LABEL_SETS)} or comma-separated names")
    return list(LABEL_SETS[data_args.labels])


# Options that shape the network: they build a preset, and cannot reshape a saved model.
ARCHITECTURE_OPTIONS = ("use_fam", "use_fsm", "use_point_rend", "neck_channels", "head_channels", "deformable_groups")


def build_model(
    model_args: ModelArguments, label_names: Sequence[str], ignore_index: int = 255
) -> FaPNForSemanticSegmentation:
    """A preset with overrides, or a saved FaPN re-headed for `label_names`; the loss ignores `ignore_index`.

    A saved model keeps its architecture: architecture options that differ from it raise a `ValueError` (they are
    never dropped silently); `freeze_backbone_norm` and `freeze_backbone_stages` apply to either."""
    id2label, label2id = label_maps(list(label_names))
    # Backbone freezing lives in the config (it travels with the weights); these arguments override it.
    freezing: dict[str, Any] = {"freeze_backbone_norm": model_args.freeze_backbone_norm}
    if model_args.freeze_backbone_stages is not None:
        freezing["freeze_backbone_stages"] = model_args.freeze_backbone_stages
    if model_args.model_name_or_path:
        return _load_model_to_fine_tune(model_args, id2label, label2id, ignore_index, freezing)
    overrides: dict[str, Any] = {"semantic_loss_ignore_index": ignore_index, **freezing}
    overrides |= {key: value for key in ARCHITECTURE_OPTIONS if (value := getattr(model_args, key)) is not None}
    if model_args.backbone:
        overrides["backbone"] = model_args.backbone
    config = preset_config(model_args.preset, list(label_names), **overrides)
    if model_args.pretrained_backbone:
        return FaPNForSemanticSegmentation.from_pretrained_backbone(config)
    return FaPNForSemanticSegmentation(config)


def _load_model_to_fine_tune(
    model_args: ModelArguments,
    id2label: dict[int, str],
    label2id: dict[str, int],
    ignore_index: int,
    freezing: dict[str, Any],
) -> FaPNForSemanticSegmentation:
    source = model_args.model_name_or_path
    check_model_source(source)
    try:
        config = AutoConfig.from_pretrained(
            source,
            id2label=id2label,
            label2id=label2id,
            semantic_loss_ignore_index=ignore_index,
            trust_remote_code=model_args.trust_remote_code,
        )
    except OSError as error:
        if Path(source).is_dir():
            raise
        raise model_not_found_error(source, error) from error
    conflicts = [
        f"{key}={value!r} (the model has {getattr(config, key, None)!r})"
        for key in ARCHITECTURE_OPTIONS
        if (value := getattr(model_args, key)) is not None and value != getattr(config, key, None)
    ]
    saved_backbone = getattr(config.backbone_config, "backbone", None)
    if model_args.backbone and model_args.backbone != saved_backbone:
        conflicts.append(f"backbone={model_args.backbone!r} (the model has {saved_backbone!r})")
    if model_args.pretrained_backbone:
        conflicts.append("pretrained_backbone=True (the saved weights already hold the backbone)")
    if conflicts:
        raise ValueError(
            f"model_name_or_path={source!r} is fine-tuned with its own architecture, which these options would "
            f"change: {'; '.join(conflicts)}. Drop them, or leave out model_name_or_path to build a preset with them."
        )
    for key, value in freezing.items():
        setattr(config, key, value)
    return AutoModelForSemanticSegmentation.from_pretrained(
        source, config=config, ignore_mismatched_sizes=True, trust_remote_code=model_args.trust_remote_code
    )


def build_image_processor(data_args: DataArguments) -> FaPNImageProcessor:
    """The processor saved with the model, the one place images become `pixel_values`: it rescales and normalises
    the training crops, and resizes (`eval_shortest_edge` / `eval_longest_edge`) the images of inference."""
    size = {"shortest_edge": data_args.eval_shortest_edge or 512}
    if data_args.eval_longest_edge:
        size["longest_edge"] = data_args.eval_longest_edge
    return FaPNImageProcessor(
        do_resize=data_args.eval_shortest_edge is not None, size=size, do_reduce_labels=data_args.reduce_labels
    )


_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete Trainer checkpoint (a run stopped while writing it), or None when it is."""
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "it has no trainer_state.json, the file the Trainer writes last"
    try:
        json.loads(state.read_text())["global_step"]
    except (ValueError, KeyError, TypeError):
        return "its trainer_state.json is cut short"
    weights = sorted(folder.glob("model*.safetensors"))
    if not weights:
        return "it has no model weights (model.safetensors)"
    for path in weights:
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception:  # safetensors' own errors for a truncated header or data
            return f"{path.name} is cut short"
    return None


def resolve_resume_checkpoint(output_dir: str | Path, resume: str | bool | None) -> str | None:
    """The checkpoint folder to resume from: `resume` itself, or with `"last"` (or True) the newest `checkpoint-N`
    in `output_dir`. A checkpoint that a stopped run left incomplete raises a `ValueError` that names it and offers
    the newest complete one; a missing one raises `FileNotFoundError`."""
    if resume in (None, "", False):
        return None
    if resume is True or str(resume).lower() in ("last", "true"):
        output_dir = Path(output_dir)
        found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and _CHECKPOINT_NAME.fullmatch(p.name)]
        checkpoints = sorted(found, key=lambda p: int(_CHECKPOINT_NAME.fullmatch(p.name).group(1)))
        if not checkpoints:
            raise FileNotFoundError(f"resume_from_checkpoint=last: {output_dir} holds no checkpoint-* folder")
        chosen = checkpoints[-1]
    else:
        chosen = Path(resume)
        if not chosen.is_dir():
            raise FileNotFoundError(f"resume_from_checkpoint: no checkpoint folder {chosen}")
        checkpoints = [chosen]
    problem = checkpoint_problem(chosen)
    if problem is None:
        return str(chosen)
    previous = next((c for c in reversed(checkpoints[:-1]) if checkpoint_problem(c) is None), None)
    offer = (
        f"resume from the previous one with --resume_from_checkpoint {previous}"
        if previous is not None
        else "there is no earlier complete checkpoint to resume from"
    )
    raise ValueError(
        f"checkpoint {chosen} is incomplete: {problem} (the run was probably stopped while writing it); {offer}, "
        f"or delete {chosen}"
    )


def check_output_dir(training_args: FaPNTrainingArguments) -> None:
    """Refuses to train into a non-empty `output_dir` unless resuming or `overwrite_output_dir` (the Trainer's
    convention): a new run must not mix its files with an earlier one's."""
    output_dir = Path(training_args.output_dir)
    if training_args.overwrite_output_dir or training_args.resume_from_checkpoint or not output_dir.is_dir():
        return
    entries = sorted(path.name for path in output_dir.iterdir())
    if not entries:
        return
    shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
    resume = any(_CHECKPOINT_NAME.fullmatch(name) for name in entries)
    raise FileExistsError(
        f"output_dir {output_dir} is not empty ({shown}): choose another folder"
        + (", resume the run with --resume_from_checkpoint last" if resume else "")
        + ", or pass --overwrite_output_dir true to write over it"
    )


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
    """Trains and evaluates, then writes a Hub-ready folder, `metrics.json`, `training_curves.png` and prediction
    overlays to `training_args.output_dir`.

    Refuses a non-empty `output_dir` unless resuming or `overwrite_output_dir`, and an incomplete checkpoint to
    resume from; evaluation scores every image at its label's original resolution (`fapn_hf.evaluation`)."""
    resume = resolve_resume_checkpoint(training_args.output_dir, training_args.resume_from_checkpoint)
    check_output_dir(training_args)
    set_seed(training_args.seed)
    label_names = resolve_labels(data_args)
    spec = LabelSpec(len(label_names), data_args.ignore_index, data_args.label_mapping, data_args.reduce_labels)
    splits = load_segmentation_dataset(
        data_args.dataset,
        config_name=data_args.dataset_config,
        revision=data_args.dataset_revision,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        train_split=data_args.train_split,
        validation_split=data_args.validation_split,
        validation_fraction=data_args.validation_fraction,
        seed=training_args.seed,
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
            splits[split], reports[split] = check_samples(splits[split], spec, data_args.bad_sample_policy, split)

    model = build_model(model_args, label_names, data_args.ignore_index)
    processor = build_image_processor(data_args)
    augmentation = TrainAugmentation(
        crop_size=data_args.crop_hw,
        scale_range=data_args.scale_bounds,
        cat_max_ratio=data_args.cat_max_ratio,
        hflip_probability=data_args.hflip_probability,
        photometric=data_args.photometric_distortion,
        ignore_index=data_args.ignore_index,
    )
    train_dataset = SegmentationDataset(splits["train"], spec, augmentation, processor, seed=training_args.seed)
    # No transform: the processor resizes the images, the labels keep their resolution, where they are scored.
    eval_dataset = SegmentationDataset(splits["validation"], spec, None, processor, random=False)
    metrics = SegmentationMetrics(len(label_names), data_args.ignore_index, id2label=dict(enumerate(label_names)))
    trainer = FaPNTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=SegmentationCollator(data_args.ignore_index),
        processing_class=processor,
        compute_metrics=make_compute_metrics(metrics),
        callbacks=[EpochSetter(train_dataset), *callbacks],
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    eval_metrics = trainer.evaluate()
    trainer.save_model(training_args.output_dir)

    if data_args.validation_fraction is not None:
        fraction, seed = data_args.validation_fraction, training_args.seed
        validation = f"{fraction:.0%} of the {data_args.train_split!r} split held out (seed {seed})"
    else:
        validation = f"the data set's {data_args.validation_split!r} split"
    results = {
        "train": train_result.metrics,
        "eval": eval_metrics,
        "data": {split: report.to_dict() for split, report in reports.items()},
        "model": {"preset": model_args.preset, "parameters": sum(p.numel() for p in model.parameters())},
        "dataset": data_args.dataset,
        "settings": {
            **asdict(model_args),
            "dataset": data_args.dataset,
            "validation": validation,
            "crop_size": data_args.crop_size,
        },
    }
    output_dir = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        write_run_outputs(trainer, eval_dataset, results, data_args, output_dir)
    return TrainingRun(output_dir, results, trainer)


def write_run_outputs(
    trainer: FaPNTrainer,
    eval_dataset: SegmentationDataset,
    results: dict[str, Any],
    data_args: DataArguments,
    output_dir: Path,
) -> None:
    """metrics.json, training_curves.png, prediction overlays and the model card."""
    from .hub import write_model_card
    from .inference import SegmentationPredictor
    from .visualization import plot_training_curves, prediction_panel

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png")

    model = trainer.model
    colors = palette(model.config.num_labels, list(model.config.id2label.values()))
    predictor = SegmentationPredictor(model, trainer.processing_class)
    overlay_dir = output_dir / "predictions"
    overlay_dir.mkdir(exist_ok=True)
    for index in range(min(data_args.num_visualizations, len(eval_dataset))):
        image, ground_truth = eval_dataset.load(index)
        prediction = predictor.predict(image)
        prediction_panel(image, prediction, colors, ground_truth).save(overlay_dir / f"validation_{index:03d}.png")
    model.train()

    write_model_card(
        output_dir,
        model.config,
        eval_metrics=results["eval"],
        dataset_name=results["dataset"],
        training_summary=results["settings"],
    )


__all__ = [
    "ARGUMENT_CLASSES",
    "DataArguments",
    "EpochSetter",
    "FaPNTrainer",
    "FaPNTrainingArguments",
    "ModelArguments",
    "TrainingRun",
    "build_image_processor",
    "build_model",
    "check_output_dir",
    "checkpoint_problem",
    "load_recipe",
    "make_compute_metrics",
    "parameter_groups",
    "parse_arguments",
    "resolve_labels",
    "resolve_resume_checkpoint",
    "run_training",
]
