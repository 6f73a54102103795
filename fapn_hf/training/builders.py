"""Builders of a run's pieces from its arguments: the class names, the model (a preset of any family, or a saved
model re-headed for new classes) and the image processor.

The family follows the preset (`fapn_hf.families.family_of_preset`) or, for a saved model, its config's
`model_type` (`family_of`); the family says which options it takes and how they become its config."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoConfig, PreTrainedModel

from ..families import FAMILIES, Family, family_of, family_of_preset
from ..inference.sources import check_model_source, model_not_found_error
from ..labels import LABEL_SETS, label_maps
from ..tasks.base import Task
from .args import DataArguments, ModelArguments


def apply_label_settings(data_args: DataArguments, task: Task) -> DataArguments:
    """`data_args` with its data set's label set, raw-id mapping and reduction where they are unset: what the task
    says the data set brings (`Task.label_settings`; for semantic segmentation a downloaded folder layout's own,
    `fapn_hf.tasks.semantic.layouts`), else none. An argument that contradicts the data set raises `ValueError`
    naming both."""
    return resolve_label_settings(data_args, task)[0]


def resolve_label_settings(data_args: DataArguments, task: Task) -> tuple[DataArguments, int | None]:
    """`apply_label_settings`, and the number of thing classes the data set says it has (detection tasks: things
    come first in its label set; None where the task has no things and stuff, or the data set does not say)."""
    settings = task.label_settings(
        data_args.dataset, data_args.labels, data_args.label_mapping, data_args.reduce_labels
    )
    data_args = dataclasses.replace(
        data_args,
        labels=data_args.labels if data_args.labels is not None else settings.labels,
        label_mapping=settings.label_mapping,
        reduce_labels=settings.reduce_labels,
    )
    return data_args, getattr(settings, "num_thing_labels", None)


def resolve_labels(data_args: DataArguments) -> list[str]:
    """Class names: the `labels` argument, or the demo set's built-in ones (a folder layout's come in through
    `apply_label_settings`)."""
    if data_args.labels is None:
        if data_args.dataset != "demo":
            raise ValueError(
                "pass `labels` ('cityscapes', 'ade20k', 'cocostuff', 'voc' or comma-separated class names) for this "
                "data set (a Cityscapes, ADE20K, COCO-Stuff or Pascal VOC folder as downloaded brings its own)"
            )
        from ..tasks.semantic.demo_data import DEMO_LABELS

        return list(DEMO_LABELS)
    if "," in data_args.labels:
        return [name.strip() for name in data_args.labels.split(",") if name.strip()]
    if data_args.labels not in LABEL_SETS:
        raise ValueError(f"unknown label set {data_args.labels!r}; use {sorted(LABEL_SETS)} or comma-separated names")
    return list(LABEL_SETS[data_args.labels])


def _family_specific_options() -> set[str]:
    """Every `ModelArguments` field that some family takes and another may not."""
    return {key for family in FAMILIES.values() for key in (*family.options, *family.training_options)}


def _refuse_foreign_options(family: Family, model_args: ModelArguments, what: str) -> None:
    """`ValueError` naming the given options that `family` does not take, the families that do, and the ones it
    takes."""
    own = {*family.options, *family.training_options}
    foreign = {
        key: value
        for key in sorted(_family_specific_options() - own)
        if (value := getattr(model_args, key, None)) is not None
    }
    if foreign:
        given = "; ".join(f"{key}={value!r} (a {family.display_name} model has none)" for key, value in foreign.items())
        owners = "; ".join(
            f"{key}: {', '.join(f.name for f in FAMILIES.values() if key in (*f.options, *f.training_options))}"
            for key in foreign
        )
        raise ValueError(
            f"these options do not apply to {what}: {given}. They belong to other families ({owners}); "
            f"{family.display_name} takes {', '.join(sorted(own))} and freeze_backbone_norm"
        )


def resolve_family(model_args: ModelArguments) -> Family:
    """The family a run trains: the preset's, or the saved model's (`model_name_or_path`, by its config)."""
    if not model_args.model_name_or_path:
        return family_of_preset(model_args.preset)
    return family_of(_saved_config(model_args))


def task_to_train(family: Family, model_args: ModelArguments) -> Task:
    """The task a run trains for: the family's, or, where its configs choose (`Family.task_of`: the detectors'
    meta-architecture), the preset's or the saved model's."""
    if family.task_of is None:
        return family.task
    config = _saved_config(model_args) if model_args.model_name_or_path else family.preset_config(model_args.preset)
    return family.task_for(config)


def _saved_config(model_args: ModelArguments, **changes: object) -> object:
    """The config of `model_name_or_path` (a folder or Hub id), with `changes`; a name that is neither raises
    `FileNotFoundError` naming the closest folder."""
    source = model_args.model_name_or_path
    check_model_source(source)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=model_args.trust_remote_code, **changes)
    except OSError as error:
        if Path(source).is_dir():
            raise
        raise model_not_found_error(source, error) from error


def build_model(
    model_args: ModelArguments,
    label_names: Sequence[str],
    ignore_index: int = 255,
    num_thing_labels: int | None = None,
) -> PreTrainedModel:
    """A preset with overrides, or a saved model re-headed for `label_names`; the loss ignores `ignore_index`.
    `num_thing_labels` (detectors: the first that many labels are things, the rest stuff) is set in the config when
    given.

    The preset's family builds its head class from `preset_config(preset, labels, **family.config_overrides(...))`;
    a saved model (`model_name_or_path`, any family) keeps its own architecture (`_load_model_to_fine_tune`).
    Options the family does not take, and architecture options that differ from a saved model, raise a
    `ValueError` (they are never dropped silently); the freezing options and the family's training options apply
    either way."""
    id2label, label2id = label_maps(list(label_names))
    if model_args.model_name_or_path:
        model, family = _load_model_to_fine_tune(model_args, id2label, label2id, ignore_index, num_thing_labels)
    else:
        family = family_of_preset(model_args.preset)
        _refuse_foreign_options(family, model_args, f"the preset {model_args.preset!r}")
        overrides = family.config_overrides(model_args, ignore_index)
        if num_thing_labels is not None:
            overrides["num_thing_labels"] = num_thing_labels
        config = family.preset_config(model_args.preset, list(label_names), **overrides)
        head = family.head_class
        model = head.from_pretrained_backbone(config) if model_args.pretrained_backbone else head(config)
    family.after_build(model, model_args)
    return model


def _load_model_to_fine_tune(
    model_args: ModelArguments,
    id2label: dict[int, str],
    label2id: dict[str, int],
    ignore_index: int,
    num_thing_labels: int | None = None,
) -> tuple[PreTrainedModel, Family]:
    """The saved model (any family, by its `model_type`) with a new classifier for `id2label`."""
    source = model_args.model_name_or_path
    changes = {"num_thing_labels": num_thing_labels} if num_thing_labels is not None else {}
    config = _saved_config(
        model_args, id2label=id2label, label2id=label2id, semantic_loss_ignore_index=ignore_index, **changes
    )
    family = family_of(config)
    what = f"model_name_or_path={source!r}"
    _refuse_foreign_options(family, model_args, what)
    saved = family.saved_options(config)
    conflicts = [
        f"{key}={value!r} (the model has {saved.get(key)!r})"
        for key in family.options
        if (value := getattr(model_args, key, None)) is not None and value != saved.get(key)
    ]
    if model_args.pretrained_backbone:
        conflicts.append("pretrained_backbone=True (the saved weights already hold the backbone)")
    if conflicts:
        raise ValueError(
            f"{what} is fine-tuned with its own architecture, which these options would change: "
            f"{'; '.join(conflicts)}. Drop them, or leave out model_name_or_path to build a preset with them."
        )
    family.apply_freezing(config, model_args)
    model = family.auto_class.from_pretrained(
        source, config=config, ignore_mismatched_sizes=True, trust_remote_code=model_args.trust_remote_code
    )
    return model, family


def build_image_processor(
    data_args: DataArguments, model: PreTrainedModel, model_args: ModelArguments | None = None
) -> object:
    """The processor saved with the model, the one place images become `pixel_values`: it rescales and normalises
    the training crops, and resizes (`eval_shortest_edge` / `eval_longest_edge`) the images of inference. Its class
    is the model's family's (`Family.build_processor`).

    A model whose task is scored on post-processed predictions (`Task.score_batch`: the detectors) takes the
    processor of its preset (`Family.preset_image_processor`: its backbone's normalisation), or the one saved with
    `model_name_or_path`, with the model's meta-architecture and thing count and the run's inference resize."""
    size = {"shortest_edge": data_args.eval_shortest_edge or 512}
    if data_args.eval_longest_edge:
        size["longest_edge"] = data_args.eval_longest_edge
    family = family_of(model)
    if family.task_for(model).score_batch is not None:
        return _post_processing_image_processor(data_args, model, family, model_args, size)
    settings = {
        "do_resize": data_args.eval_shortest_edge is not None,
        "size": size,
        "do_reduce_labels": bool(data_args.reduce_labels),
    }
    return family.build_processor(settings, data_args.ignore_index)


def _post_processing_image_processor(
    data_args: DataArguments, model: PreTrainedModel, family: Family, model_args: ModelArguments | None, size: dict
) -> object:
    config = model.config
    settings: dict[str, object] = {"do_resize": data_args.eval_shortest_edge is not None}
    if data_args.eval_shortest_edge is not None:
        settings["size"] = size
    if model_args is not None and model_args.model_name_or_path:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(
            model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
        )
    else:
        preset = model_args.preset if model_args is not None else None
        if preset not in family.presets:
            raise ValueError(f"build_image_processor needs the model's preset (one of {sorted(family.presets)})")
        processor = family.preset_image_processor(preset, list(config.id2label.values()))
    # The run's resize, and what post-processing needs to know of this model (the things / stuff split).
    for key, value in {
        **settings,
        "meta_architecture": getattr(config, "meta_architecture", None),
        "num_thing_labels": getattr(config, "num_thing_labels", None),
    }.items():
        setattr(processor, key, value)
    return processor


__all__ = [
    "apply_label_settings",
    "build_image_processor",
    "build_model",
    "resolve_family",
    "resolve_label_settings",
    "resolve_labels",
    "task_to_train",
]
