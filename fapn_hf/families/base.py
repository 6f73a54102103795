"""What a model family is to the engines: one `Family` per family, defined in its own sub-package of
`fapn_hf.families` and found by the registry (`fapn_hf.families`) by `config.model_type` or by preset name.

Training, evaluation, prediction, export, conversion, the model card, the Space and the command line ask a family
these questions instead of testing which family a model belongs to."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..modeling.remote_code import CodeFamily
from ..tasks.base import Task

# The package whose flat modules hold every family's shipped classes (CodeFamily names them as "module.Class").
SHIPPED_PACKAGE = "fapn_hf.modeling"


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


@dataclass(frozen=True)
class ExportSpec:
    """How a family's model leaves and comes back from ONNX.

    Args:
        output_names: the graph's outputs, in the order the exported forward returns them.
        wrap: `(outputs: dict[name, torch.Tensor], pixel_values, config) -> ModelOutput`: the runtime's arrays as the
            model's own output class, so post-processing takes either.
    """

    output_names: tuple[str, ...]
    wrap: Callable[[dict[str, torch.Tensor], torch.Tensor, Any], Any]


@dataclass(frozen=True, kw_only=True)
class Family:
    """One model family: its classes, presets and options, and the answers the engines need.

    Args:
        name: the registry key, e.g. `"fapn"`.
        display_name: how messages and cards name it, e.g. `"MaskFormer + FaPN"`.
        model_type: `config.model_type` of its configs (the lookup key; remote-code copies share it).
        task: what its models predict (`fapn_hf.tasks`); where a family's models predict different things (the
            detectors: boxes, instance masks or a panoptic map), the task of its first presets, and `task_of` tells
            a config's (`Family.task_for`).
        task_of: `config -> Task` for a family whose configs choose their task, or None (always `task`).
        code: its shipped classes per Auto class (`CodeFamily`).
        head_auto_class: the Auto class that loads a saved folder of this family with its head.
        presets: preset name -> settings.
        preset_config: `(name, labels=None, **overrides) -> config` of a preset.
        preset_image_processor: `(name, labels=None, **overrides) -> image processor` of a preset.
        options: the `ModelArguments` fields that shape this family's network (checked against a saved model).
        training_options: the other `ModelArguments` fields only this family takes (e.g. `drop_path_rate`).
        config_overrides: `(model_args, ignore_index) -> overrides for preset_config`, from those fields.
        saved_options: `(config) -> {option: value}` of those fields in a saved config.
        apply_freezing: `(config, model_args) -> None`: sets the backbone freezing a run asks for.
        after_build: `(model, model_args) -> None`: training-only settings applied to a built model.
        build_processor: `(settings, ignore_index) -> image processor` for a training run (`settings`: resize and
            label-reduction keywords).
        train_collator: `(num_labels, ignore_index) -> collator` of training batches (semantic tasks; a detection
            task's batches are its own).
        decay_bias: whether the optimiser decays biases (norms are never decayed unless asked).
        eval_loss: whether evaluation computes a loss (a cross-entropy on the class scores).
        class_scores: `outputs -> (N, K, h, w)` per-pixel class scores at input resolution (semantic families; None
            for a family that predicts no per-pixel class scores).
        scores_are_probabilities: whether `class_scores` are already probabilities (test-time augmentation averages
            them as they are) rather than logits (averaged after a softmax).
        export: the ONNX outputs, or None where the family cannot be exported.
        describe: `config -> one line` naming the architecture, for cards and the command line.
        card_summary: the paragraph a model card gives after that line.
        converter: the conversion of the authors' checkpoints of this family (`fapn_hf.convert`), or None.
        original_models: name -> the released checkpoints this family converts.
    """

    name: str
    display_name: str
    model_type: str
    task: Task
    code: CodeFamily
    head_auto_class: str
    presets: Mapping[str, Mapping[str, Any]]
    preset_config: Callable[..., Any]
    preset_image_processor: Callable[..., Any]
    options: tuple[str, ...]
    training_options: tuple[str, ...]
    config_overrides: Callable[[Any, int], dict[str, Any]]
    saved_options: Callable[[Any], dict[str, Any]]
    apply_freezing: Callable[[Any, Any], None]
    build_processor: Callable[[dict[str, Any], int], Any]
    describe: Callable[[Any], str]
    card_summary: str
    train_collator: Callable[[int, int], Callable[..., Any]] | None = None
    class_scores: Callable[[Any], torch.Tensor] | None = None
    task_of: Callable[[Any], Task] | None = None
    after_build: Callable[[Any, Any], None] = _nothing
    decay_bias: bool = False
    eval_loss: bool = True
    scores_are_probabilities: bool = False
    export: ExportSpec | None = None
    converter: Any = None
    original_models: Mapping[str, Any] = field(default_factory=dict)

    def task_for(self, model_or_config: Any) -> Task:
        """The task of a model or config of this family (`task_of`'s answer, or the family's one `task`)."""
        if self.task_of is None:
            return self.task
        return self.task_of(getattr(model_or_config, "config", model_or_config))

    @property
    def predicts_pixel_classes(self) -> bool:
        """Whether the family's models give per-pixel class scores (`class_scores`): what the semantic engines
        (predictor, evaluation, Space, ONNX wrapping) need."""
        return self.class_scores is not None

    def shipped_class(self, auto_class: str) -> type:
        """The class this family registers for `auto_class` (e.g. `"AutoModel"`)."""
        module, class_name = self.code.models[auto_class].split(".")
        return getattr(importlib.import_module(f"{SHIPPED_PACKAGE}.{module}"), class_name)

    @property
    def head_class(self) -> type:
        """The model class with this family's head (what `head_auto_class` loads)."""
        return self.shipped_class(self.head_auto_class)

    @property
    def config_class(self) -> type:
        module, class_name = self.code.config.split(".")
        return getattr(importlib.import_module(f"{SHIPPED_PACKAGE}.{module}"), class_name)

    @property
    def auto_class(self) -> type:
        """transformers' Auto class that loads this family's head from a folder or the Hub."""
        import transformers

        return getattr(transformers, self.head_auto_class)


__all__ = ["SHIPPED_PACKAGE", "ExportSpec", "Family"]
