"""The arguments of a training run and the recipes that set them.

A run is described by three dataclasses, `ModelArguments`, `DataArguments` and `FaPNTrainingArguments` (the HF
`TrainingArguments` plus FaPN's optimiser options). `parse_arguments` fills them from a YAML/JSON recipe
(`load_recipe`), then keyword overrides, then command-line flags.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from ..families import all_presets
from ..inference.threads import parse_threads
from ..tasks.semantic.data import BAD_SAMPLE_POLICIES

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which model to train: a preset (with optional overrides) or a saved model (folder or Hub id) of any family.

    The preset's family (`fapn_hf.families`) says which of the options below it takes (`Family.options`,
    `Family.training_options`); one it does not take is an error (`fapn_hf.training.builders.build_model`)."""

    preset: str = field(default="fapn-r50", metadata={"help": f"model preset: {', '.join(all_presets())}"})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "fine-tune a saved FaPN or MaskFormer + FaPN (folder or Hub id) instead of a preset"},
    )
    backbone: str | None = field(default=None, metadata={"help": "timm backbone name replacing the preset's"})
    pretrained_backbone: bool = field(default=False, metadata={"help": "start from timm's ImageNet weights"})
    use_fam: bool | None = field(default=None, metadata={"help": "override the preset's feature alignment switch"})
    use_fsm: bool | None = field(default=None, metadata={"help": "override the preset's feature selection switch"})
    use_point_rend: bool | None = field(default=None, metadata={"help": "override the preset's PointRend switch"})
    neck_channels: int | None = field(default=None, metadata={"help": "pyramid width D (paper: 256)"})
    head_channels: int | None = field(default=None, metadata={"help": "semantic head width (paper: 128)"})
    deformable_groups: int | None = field(default=None, metadata={"help": "FAM deformable groups (paper: 8)"})
    num_queries: int | None = field(default=None, metadata={"help": "MaskFormer: object queries (original: 100)"})
    decoder_layers: int | None = field(
        default=None, metadata={"help": "MaskFormer: transformer decoder layers (original: 6)"}
    )
    decoder_hidden_size: int | None = field(
        default=None,
        metadata={"help": "MaskFormer: transformer decoder width, a multiple of 32 (original: 256, FFN 8x)"},
    )
    drop_path_rate: float | None = field(
        default=None,
        metadata={"help": "MaskFormer: stochastic depth of a timm transformer backbone, 0 -> this (Swin-L: 0.3)"},
    )
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
    """Where the data comes from, its label map, and the augmentation of the paper's recipes.

    `crop_size` is `[height, width]` in pixels (one value: a square crop) and `scale_range` is `[min, max]` of the
    random resize factor; a recipe writes them as YAML lists (`crop_size: [512, 1024]`), the command line as
    separate values (`--crop_size 512 1024 --scale_range 0.5 2.0`). After construction `crop_size` always holds two
    ints and `scale_range` two floats.
    """

    dataset: str = field(
        default="demo",
        metadata={
            "help": "'demo'; a Cityscapes, ADE20K, COCO-Stuff-10K/-164K or Pascal VOC folder as downloaded (its label "
            "set, mapping and reduction come with it); another local folder (save_to_disk, parquet, imagefolder); or "
            "a Hub data set id"
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub data set configuration name"})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub data set revision"})
    image_column: str = "image"
    label_column: str = "label"
    train_split: str = field(default="train", metadata={"help": "a folder layout also takes its own name (training)"})
    validation_split: str = field(
        default="validation",
        metadata={"help": "a folder layout also takes its own name (val, test for COCO-Stuff-10K)"},
    )
    validation_fraction: float | None = field(
        default=None,
        metadata={"help": "hold this fraction of train_split out as the validation set (only when set)"},
    )
    labels: str | None = field(
        default=None,
        metadata={
            "help": "'cityscapes', 'ade20k', 'cocostuff', 'voc' or comma-separated class names (demo and folder "
            "layouts: their own)"
        },
    )
    label_mapping: str | None = field(
        default=None,
        metadata={"help": "raw id mapping, e.g. 'cityscapes' (34 -> 19); a folder layout: its own"},
    )
    # None: not given, the data's own (a folder layout's, else no reduction); given, a contradiction is an error.
    reduce_labels: bool | None = field(
        default=None,
        metadata={
            "help": "0 -> ignore, others minus 1 (ADE20K; a folder layout: its own)",
            "nargs": "?",
            "const": True,
        },
    )
    ignore_index: int = 255
    crop_size: list[int] = field(
        default_factory=lambda: [512, 1024],
        metadata={"help": "training crop in pixels: height width (one value: a square)"},
    )
    scale_range: list[float] = field(
        default_factory=lambda: [0.5, 2.0], metadata={"help": "random resize factors: min max"}
    )
    cat_max_ratio: float = field(default=0.75, metadata={"help": "max share of one class in a crop (1 = off)"})
    hflip_probability: float = 0.5
    min_size_train: list[int] | None = field(
        default=None,
        metadata={"help": "detectors: shorter sides sampled for training images (None: detectron2's 640 672 ... 800)"},
    )
    max_size_train: int | None = field(
        default=None, metadata={"help": "detectors: longest side of a training image (None: detectron2's 1333)"}
    )
    photometric_distortion: bool = True
    eval_shortest_edge: int | None = field(
        default=None,
        metadata={"help": "the processor's inference resize (None: keep the size); scores stay at label resolution"},
    )
    eval_longest_edge: int | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    check_data: bool = field(
        default=True,
        metadata={
            "help": "validate every sample before training (decoded; a folder layout: from its index, with a "
            "decoded spot check)"
        },
    )
    bad_sample_policy: str = field(default="fail", metadata={"help": f"one of {BAD_SAMPLE_POLICIES}"})
    demo_train_samples: int = 192
    demo_validation_samples: int = 48
    demo_size: int = 128
    demo_ignore_region: bool = True
    num_visualizations: int = field(default=4, metadata={"help": "validation overlays written at the end"})

    def __post_init__(self) -> None:
        if self.bad_sample_policy not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"bad_sample_policy must be one of {BAD_SAMPLE_POLICIES}, got {self.bad_sample_policy!r}")
        self.crop_size = _crop_size(self.crop_size)
        self.scale_range = _scale_range(self.scale_range)
        if self.min_size_train is not None:
            sizes = _as_list("min_size_train", self.min_size_train, "640 800")
            if not sizes or not all(isinstance(s, Integral) and not isinstance(s, bool) and s > 0 for s in sizes):
                raise ValueError(f"min_size_train must be positive integers (pixels), got {sizes}")
            self.min_size_train = [int(size) for size in sizes]
        if self.max_size_train is not None and self.max_size_train <= 0:
            raise ValueError(f"max_size_train must be a positive number of pixels, got {self.max_size_train}")


def _as_list(name: str, value: Any, example: str) -> list[Any]:
    """`value` as a list; a string (the old "512x1024" / "0.5,2.0" form) is refused with the list form to write
    (its own numbers, or `example`, e.g. "512 1024")."""
    if isinstance(value, str):
        numbers = re.findall(r"\d+(?:\.\d*)?", value) or example.split()
        raise ValueError(
            f"{name} takes numbers, not the string {value!r}: write `{name}: [{', '.join(numbers)}]` in a recipe, "
            f"`--{name} {' '.join(numbers)}` on the command line"
        )
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _crop_size(value: Any) -> list[int]:
    """`[height, width]` from one or two positive integers (one: a square crop)."""
    sizes = _as_list("crop_size", value, "512 1024")
    if len(sizes) not in (1, 2):
        raise ValueError(
            f"crop_size takes 1 or 2 values (height width, or one for a square), got {len(sizes)}: {sizes}"
        )
    if not all(isinstance(size, Integral) and not isinstance(size, bool) and size > 0 for size in sizes):
        raise ValueError(f"crop_size must be positive integers (pixels), got {sizes}")
    return [int(size) for size in sizes] * (2 // len(sizes))


def _scale_range(value: Any) -> list[float]:
    """`[min, max]` from two positive numbers with min <= max."""
    bounds = _as_list("scale_range", value, "0.5 2.0")
    if len(bounds) != 2:
        raise ValueError(f"scale_range takes 2 values (min max), got {len(bounds)}: {bounds}")
    if not all(isinstance(bound, Real) and not isinstance(bound, bool) and bound > 0 for bound in bounds):
        raise ValueError(f"scale_range must be positive numbers, got {bounds}")
    low, high = (float(bound) for bound in bounds)
    if low > high:
        raise ValueError(f"scale_range must be min max with min <= max, got {bounds}")
    return [low, high]


@dataclass
class FaPNTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the optimiser options of the FaPN recipes; defaults suit semantic segmentation."""

    backbone_lr_multiplier: float = field(
        default=1.0, metadata={"help": "backbone learning rate = lr * this (MaskFormer's BACKBONE_MULTIPLIER)"}
    )
    weight_decay_norm_and_bias: bool = field(
        default=False,
        metadata={
            "help": "also decay norms, embeddings and biases (off: none for norms and embeddings; biases only for "
            "MaskFormer, as the original)"
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "train into a non-empty output_dir (files are replaced as they are written)"}
    )
    lr_decay_steps: list[int] | None = field(
        default=None,
        metadata={
            "help": "detectron2's WarmupMultiStepLR instead of lr_scheduler_type: the learning rate is multiplied by "
            "lr_decay_factor at each of these steps (the paper's 1x: 60000 80000), after a linear warm-up from "
            "0.001 x lr over warmup_steps",
            "nargs": "+",
        },
    )
    lr_decay_factor: float = field(default=0.1, metadata={"help": "the factor of each lr_decay_steps step (gamma)"})
    threads: str = field(
        default="auto",
        metadata={
            "help": "PyTorch's CPU threads: a number, or auto (one per core, fewer while other processes, the data "
            "loader's workers included, keep cores busy; re-checked every few steps)"
        },
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
        self._check_lr_decay_steps()
        parse_threads(self.threads)  # a bad value is refused before any work
        scheduler = getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)
        warmup = self.warmup_steps if self.warmup_steps >= 1 else 0  # below 1: a ratio of the training steps
        if scheduler == "polynomial" and 0 < self.max_steps == warmup:
            # transformers' polynomial schedule divides by (max_steps - warmup_steps): a ZeroDivisionError otherwise.
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must differ from max_steps ({self.max_steps}) with the "
                "polynomial learning-rate schedule, which decays over the steps after the warm-up"
            )

    def _check_lr_decay_steps(self) -> None:
        steps = self.lr_decay_steps
        if steps is None:
            return
        if isinstance(steps, (int, str)):
            steps = [steps]
        try:
            steps = [int(step) for step in steps]
        except (TypeError, ValueError):
            raise ValueError(f"lr_decay_steps must be whole step numbers, got {self.lr_decay_steps!r}") from None
        if not steps or any(step <= 0 for step in steps) or steps != sorted(set(steps)):
            raise ValueError(f"lr_decay_steps must be increasing positive step numbers, got {self.lr_decay_steps!r}")
        if self.max_steps > 0 and steps[-1] >= self.max_steps:
            raise ValueError(
                f"lr_decay_steps {steps} must lie before max_steps ({self.max_steps}): a later step never decays"
            )
        if not 0 < self.lr_decay_factor <= 1:
            raise ValueError(f"lr_decay_factor must be in (0, 1], got {self.lr_decay_factor!r}")
        self.lr_decay_steps = steps


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
        raise ValueError(f"{path}: unknown arguments {unknown}{hints}; see `fapn-train --help`")
    return recipe


def parse_arguments(
    argv: Sequence[str], recipe: str | Path | None = None, **overrides: Any
) -> tuple[ModelArguments, DataArguments, FaPNTrainingArguments]:
    """The three argument dataclasses from a recipe, then `overrides`, then command-line flags `argv` (last wins).

    A first element of `argv` that is not a flag is taken as the recipe path. List arguments take several values on
    the command line (`--crop_size 96 96`) and YAML lists in a recipe (`crop_size: [96, 96]`).
    """
    from transformers import HfArgumentParser

    argv = list(argv)
    if recipe is None and argv and not argv[0].startswith("-"):
        recipe, argv = argv[0], argv[1:]
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    defaults = {**(load_recipe(recipe) if recipe is not None else {}), **overrides}
    # argparse would parse a string default of a list argument ("96x96") with `int` and exit with a bare usage
    # message; the dataclass's own check names the value and the form to write instead.
    for name, check in (("crop_size", _crop_size), ("scale_range", _scale_range)):
        if isinstance(defaults.get(name), str):
            check(defaults[name])
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=argv)


__all__ = [
    "ARGUMENT_CLASSES",
    "DataArguments",
    "FaPNTrainingArguments",
    "ModelArguments",
    "load_recipe",
    "parse_arguments",
]
