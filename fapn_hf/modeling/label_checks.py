"""The one check of label values, for the models, the Trainer, the data pipeline, the metrics and the colour maps.

Part of the shipped kernel: imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# How many distinct offending values an error message lists.
MAX_REPORTED_VALUES = 10

# What most often puts a value outside the label map: a data set with 0 for background and the classes from 1 (ADE20K
# read without label reduction gives class ids up to num_labels, the "no object" id of mask classification).
REDUCE_LABELS_HINT = (
    ". If the data set marks background with 0 and the classes from 1, set `do_reduce_labels=True` in the image "
    "processor."
)


def check_label_values(
    labels: Any,
    num_labels: int,
    ignore_index: int | None,
    name: str = "labels",
    hint: str | Callable[[list[int]], str] = "",
    unit: str = "pixels",
) -> None:
    """Raises `ValueError` naming the values of `labels` that are neither class ids in `[0, num_labels)` nor
    `ignore_index` (None: no ignore value, e.g. for predictions), how many pixels hold them, the allowed range and the
    ignore index.

    The one check of label values for the model, the Trainer, the data pipeline, the metrics and the colour maps.

    Args:
        labels: integer `torch.Tensor` (any device) or NumPy array of any shape. Tensors are read on the host (a
            synchronisation): call it outside a compiled region.
        num_labels: the number of classes.
        ignore_index: the value that marks unlabelled pixels, or None.
        name: what holds the values, the subject of the message (`"labels"`, `"predictions"`, a file name).
        hint: appended to the message; a callable gets the sorted offending values (what probably went wrong).
        unit: what the message counts, e.g. `"pixels"` of a label map or `"targets"` of a list of class ids.
    """
    invalid = (labels < 0) | (labels >= num_labels)
    if ignore_index is not None:
        invalid = invalid & (labels != ignore_index)
    if not invalid.any():
        return
    offending = labels[invalid]
    if not isinstance(offending, np.ndarray):  # a torch tensor; labels.py stays importable without torch
        offending = offending.cpu().numpy()
    values = [int(v) for v in np.unique(offending)]
    shown = ", ".join(map(str, values[:MAX_REPORTED_VALUES]))
    more = f", ... ({len(values)} distinct values)" if len(values) > MAX_REPORTED_VALUES else ""
    allowed = f"class ids in [0, {num_labels})" + (
        "" if ignore_index is None else f" or the ignore index {ignore_index}"
    )
    suffix = hint(values) if callable(hint) else hint
    raise ValueError(
        f"{name} contain values [{shown}{more}] ({int(invalid.sum())} {unit}) outside the label map: "
        f"expected {allowed}{suffix}"
    )


def check_ignore_index(ignore_index: int, num_labels: int, owner: str) -> None:
    """Raises `ValueError` (prefixed `owner: `) when the label value the loss and the metrics ignore,
    `semantic_loss_ignore_index`, is a class id in `[0, num_labels)`: that class would never be learnt or scored.
    The check of every family's config."""
    if 0 <= ignore_index < num_labels:
        raise ValueError(
            f"{owner}: semantic_loss_ignore_index ({ignore_index}) is a valid class id for num_labels={num_labels}; "
            f"choose a value outside [0, {num_labels})"
        )


def check_num_labels_argument(num_labels: Any, id2label: dict | None, owner: str) -> None:
    """Raises `ValueError` (prefixed `owner: `) for a `num_labels` keyword that is not an int, or that contradicts
    `id2label` given with it: transformers would silently replace the class names by LABEL_0..LABEL_{n-1}. The check
    of every family's config, before transformers' own `__post_init__` reads them."""
    if num_labels is None:
        return
    if not isinstance(num_labels, int) or isinstance(num_labels, bool):
        raise ValueError(f"{owner}: num_labels must be an int, got {num_labels!r} ({type(num_labels).__name__})")
    if id2label is not None and len(id2label) != num_labels:
        raise ValueError(
            f"{owner}: num_labels={num_labels} but id2label names {len(id2label)} classes; pass id2label alone "
            "(num_labels follows from it)"
        )


def reheaded_config_dict(config_dict: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A saved config's dict for `from_dict(config_dict, **kwargs)`, where `num_labels` alone re-heads it as it does
    in-tree models (`from_pretrained(folder, num_labels=150, ignore_mismatched_sizes=True)`): the saved class names,
    which no longer fit, give way to LABEL_0..LABEL_{num_labels - 1}. Otherwise `config_dict` as it is (a config built
    directly with a conflicting `num_labels` and `id2label` is still refused by `check_num_labels_argument`)."""
    num_labels, saved_names = kwargs.get("num_labels"), config_dict.get("id2label")
    if num_labels is not None and "id2label" not in kwargs and saved_names and len(saved_names) != num_labels:
        return {key: value for key, value in config_dict.items() if key not in ("id2label", "label2id")}
    return config_dict


def check_id2label(id2label: dict[int, str] | None, owner: str) -> None:
    """Raises `ValueError` (prefixed `owner: `) unless `id2label` numbers the classes 0..K-1 without gaps and names
    each once: a gap would make the model's K outputs and the names disagree, a repeated name two classes one."""
    names = id2label or {}
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(len(names))) - set(names))
        raise ValueError(
            f"{owner}: id2label must number the classes 0..{len(names) - 1} without gaps, got ids {sorted(names)}"
            + (f" (missing {missing})" if missing else "")
        )
    if len(set(names.values())) != len(names):
        repeated = sorted({name for name in names.values() if list(names.values()).count(name) > 1})
        raise ValueError(f"{owner}: class names in id2label must be unique; repeated: {repeated}")


def check_label2id(label2id: dict[str, int] | None, id2label: dict[int, str] | None, owner: str) -> None:
    """Raises `ValueError` (prefixed `owner: `) when a given `label2id` is not the inverse of `id2label`."""
    if label2id is None or id2label is None:
        return
    inverse = {name: index for index, name in id2label.items()}
    if {name: int(index) for name, index in label2id.items()} != inverse:
        raise ValueError(
            f"{owner}: label2id {label2id} is not the inverse of id2label {id2label}; pass id2label alone (label2id "
            "follows from it) or both consistently"
        )


__all__ = [
    "MAX_REPORTED_VALUES",
    "REDUCE_LABELS_HINT",
    "check_id2label",
    "check_ignore_index",
    "check_label2id",
    "check_label_values",
    "check_num_labels_argument",
    "reheaded_config_dict",
]
