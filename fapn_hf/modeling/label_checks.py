"""The one check of label values, for the models, the Trainer, the data pipeline, the metrics and the colour maps.

Part of the shipped kernel: imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# How many distinct offending values an error message lists.
MAX_REPORTED_VALUES = 10


def check_label_values(
    labels: Any,
    num_labels: int,
    ignore_index: int | None,
    name: str = "labels",
    hint: str | Callable[[list[int]], str] = "",
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
        f"{name} contain values [{shown}{more}] ({int(invalid.sum())} pixels) outside the label map: "
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


__all__ = ["MAX_REPORTED_VALUES", "check_ignore_index", "check_label_values"]
