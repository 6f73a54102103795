"""Streaming semantic-segmentation metrics: mIoU, accuracies and boundary mIoU from accumulated confusion matrices.

Everything is derived from (K, K) int64 confusion matrices (rows = ground truth, columns = prediction) summed over
the whole evaluation set, so memory is O(K^2) whatever the number of images, and the mIoU is the dataset-level one
(not a mean of per-image mIoUs).

Conventions (those of detectron2's ``SemSegEvaluator``):

* per-class IoU = TP / (TP + FP + FN) and per-class accuracy = TP / (TP + FN);
* a class with no ground-truth pixel gets NaN for both, and is left out of ``mean_iou`` and ``mean_accuracy``, even
  when it was predicted somewhere (its false positives still lower the IoU of the true classes of those pixels);
* pixel accuracy = correctly predicted pixels / valid pixels;
* pixels whose label is ``ignore_index`` never count, whatever is predicted there.

Boundary mIoU (the boundary table of the FaPN paper) restricts the same computation to a band around the
ground-truth class boundaries:

* a *boundary pixel* is a valid (non-ignored) ground-truth pixel with a 4-neighbour inside the image that is valid
  and carries a different label;
* the *band of width d* is the set of valid pixels whose Chebyshev distance ``max(|dy|, |dx|)`` to some boundary
  pixel is at most ``d``, i.e. the boundary map dilated by a (2d+1) x (2d+1) square, then restricted to valid pixels;
* inside the band a confusion matrix is accumulated exactly like the full one, and the boundary IoU / mIoU follow
  with the same rules. ``boundary_mean_iou`` is the plain mean of the boundary mIoUs over the widths.

Typical distributed use::

    metrics = SegmentationMetrics(num_labels=150, id2label=config.id2label)
    for batch in loader:
        metrics.update(model_predictions, batch_labels)
    state = metrics.state_tensor().cuda()
    torch.distributed.all_reduce(state)
    metrics.load_state_tensor(state)
    scores = metrics.compute()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...labels import check_label_values

__all__ = ["SegmentationMetrics", "boundary_band", "confusion_matrix", "scores_from_confusion"]


def _to_long_tensor(values: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """An integer tensor or array-like as an int64 tensor, on ``device`` when given (else where it already is)."""
    if isinstance(values, torch.Tensor):
        tensor = values
    else:
        array = np.asarray(values)
        if array.dtype.kind not in "iub":
            raise TypeError(f"{name} must hold integers, got a NumPy array of dtype {array.dtype}")
        # int64 first: torch.from_numpy rejects some unsigned dtypes and negative strides.
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"{name} must hold integers, got a tensor of dtype {tensor.dtype}")
    return tensor.to(device=device, dtype=torch.int64)


def _as_batch(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """(H, W) -> (1, H, W); (N, H, W) unchanged; any other rank is a ValueError."""
    if tensor.ndim == 2:
        return tensor.unsqueeze(0)
    if tensor.ndim == 3:
        return tensor
    raise ValueError(f"{name} must have shape (N, H, W) or (H, W), got {tuple(tensor.shape)}")


def _prepare(
    predictions: Any, labels: Any, num_labels: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked (N, H, W) int64 predictions and labels on one device, plus the (N, H, W) bool map of valid pixels.

    The device is that of ``predictions`` when it is a tensor, else that of ``labels`` when it is one, else the CPU.
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be at least 1, got {num_labels}")
    if isinstance(predictions, torch.Tensor):
        device = predictions.device
    elif isinstance(labels, torch.Tensor):
        device = labels.device
    else:
        device = torch.device("cpu")
    predictions = _to_long_tensor(predictions, "predictions", device)
    labels = _to_long_tensor(labels, "labels", device)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions and labels must have the same shape, got predictions {tuple(predictions.shape)} "
            f"and labels {tuple(labels.shape)}"
        )
    predictions = _as_batch(predictions, "predictions")
    labels = _as_batch(labels, "labels")

    check_label_values(predictions, num_labels, ignore_index=None, name="predictions")
    check_label_values(labels, num_labels, ignore_index)
    return predictions, labels, labels != ignore_index


def _bincount_confusion(index: torch.Tensor, selected: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(K, K) int64 counts of the flat ``label * K + prediction`` codes at the ``selected`` pixels."""
    cells = num_labels * num_labels
    # Unselected pixels go to an extra bin that is dropped: cheaper than boolean indexing, and no host sync for it.
    counts = torch.bincount(torch.where(selected, index, cells).flatten(), minlength=cells + 1)
    return counts[:cells].reshape(num_labels, num_labels)


def confusion_matrix(
    predictions: Any, labels: Any, num_labels: int, ignore_index: int = 255, mask: Any = None
) -> torch.Tensor:
    """Confusion matrix of one batch.

    Args:
        predictions: integer tensor or array of shape (N, H, W) or (H, W), values in [0, num_labels).
        labels: integer tensor or array of the same shape, values in [0, num_labels) or ``ignore_index``.
        num_labels: number of classes K.
        ignore_index: label of pixels that never count.
        mask: optional bool tensor or array of the same shape; only pixels where it is True count.

    Returns:
        (K, K) int64 tensor on the inputs' device; entry [i, j] counts valid pixels of ground truth i predicted as j.
    """
    predictions, labels, valid = _prepare(predictions, labels, num_labels, ignore_index)
    if mask is not None:
        mask = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(mask))
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean, got dtype {mask.dtype}")
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.shape != labels.shape:
            raise ValueError(f"mask must have the shape of the labels {tuple(labels.shape)}, got {tuple(mask.shape)}")
        valid = valid & mask.to(valid.device)
    return _bincount_confusion(labels * num_labels + predictions, valid, num_labels)


def _boundary_map(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool map of valid pixels with a valid 4-neighbour of another label, from (N, H, W) inputs."""
    boundary = torch.zeros_like(valid)
    vertical = (labels[:, 1:, :] != labels[:, :-1, :]) & valid[:, 1:, :] & valid[:, :-1, :]
    boundary[:, 1:, :] |= vertical
    boundary[:, :-1, :] |= vertical
    horizontal = (labels[:, :, 1:] != labels[:, :, :-1]) & valid[:, :, 1:] & valid[:, :, :-1]
    boundary[:, :, 1:] |= horizontal
    boundary[:, :, :-1] |= horizontal
    return boundary


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, 1, H, W) float 0/1 map dilated by a (2r+1) x (2r+1) square; same shape out.

    The square is separable, so a column pass then a row pass cost O(r) per pixel instead of O(r^2).
    """
    if radius == 0:
        return mask
    kernel = 2 * radius + 1
    mask = F.max_pool2d(mask, kernel_size=(kernel, 1), stride=1, padding=(radius, 0))
    return F.max_pool2d(mask, kernel_size=(1, kernel), stride=1, padding=(0, radius))


def _check_width(width: int) -> int:
    if isinstance(width, bool) or int(width) != width or width < 0:
        raise ValueError(f"boundary widths must be non-negative integers, got {width!r}")
    return int(width)


def _bands(labels: torch.Tensor, valid: torch.Tensor, widths: Sequence[int]) -> dict[int, torch.Tensor]:
    """Bool (N, H, W) band of every width in ``widths``, from (N, H, W) labels and validity.

    Dilating by a then by b equals dilating by a + b for squares, so each width grows the previous one.
    """
    dilated = _boundary_map(labels, valid).unsqueeze(1).float()
    reach = 0
    bands = {}
    for width in sorted(set(widths)):
        dilated = _dilate(dilated, width - reach)
        reach = width
        bands[width] = (dilated[:, 0] > 0) & valid
    return bands


def boundary_band(labels: Any, width: int, ignore_index: int = 255) -> torch.Tensor:
    """Pixels within Chebyshev distance ``width`` of a ground-truth class boundary (see the module docstring).

    Args:
        labels: integer tensor or array of shape (N, H, W) or (H, W).
        width: band half-width d >= 0 in pixels (0 gives the boundary pixels themselves).
        ignore_index: label of pixels that are never boundary nor band pixels, and never make a boundary.

    Returns:
        bool tensor of the same shape as ``labels``, on its device.
    """
    width = _check_width(width)
    labels = _to_long_tensor(labels, "labels")
    batch = _as_batch(labels, "labels")
    if batch.numel() == 0:
        return torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    band = _bands(batch, batch != ignore_index, [width])[width]
    return band.reshape(labels.shape)


def _nan_mean(values: torch.Tensor) -> float:
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan


def scores_from_confusion(confusion: torch.Tensor) -> dict[str, Any]:
    """Scores of a (K, K) confusion matrix (rows = ground truth, columns = prediction), any device or int dtype.

    Returns:
        ``mean_iou``, ``pixel_accuracy``, ``mean_accuracy`` (Python floats, NaN when undefined) and
        ``per_class_iou``, ``per_class_accuracy`` (lists of K floats, NaN for classes absent from the ground truth).
    """
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix, got shape {tuple(confusion.shape)}")
    confusion = confusion.detach().to("cpu", torch.float64)
    true_positives = confusion.diagonal()
    ground_truth = confusion.sum(dim=1)
    predicted = confusion.sum(dim=0)
    present = ground_truth > 0
    nan = torch.full_like(true_positives, math.nan)
    # Where present, the union is at least the ground-truth count, so neither division can be by zero.
    iou = torch.where(present, true_positives / (ground_truth + predicted - true_positives).clamp(min=1), nan)
    accuracy = torch.where(present, true_positives / ground_truth.clamp(min=1), nan)
    total = float(ground_truth.sum())
    return {
        "mean_iou": _nan_mean(iou),
        "pixel_accuracy": float(true_positives.sum()) / total if total > 0 else math.nan,
        "mean_accuracy": _nan_mean(accuracy),
        "per_class_iou": iou.tolist(),
        "per_class_accuracy": accuracy.tolist(),
    }


class SegmentationMetrics:
    """Streaming accumulator of the full and boundary-band confusion matrices over an evaluation set.

    Call ``update`` once per batch, then ``compute``. State is ``1 + len(boundary_widths)`` (K, K) int64 matrices,
    kept on the device of the latest ``update`` inputs so that accumulating copies nothing to the host.

    Args:
        num_labels: number of classes K.
        ignore_index: label of pixels that never count.
        boundary_widths: band half-widths d (pixels) for the boundary mIoU; distinct non-negative integers.
        id2label: class names for ``per_class_iou`` in ``compute``; missing indices are named ``str(index)``.
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int = 255,
        boundary_widths: Sequence[int] = (3, 5, 8, 12),
        id2label: dict[int, str] | None = None,
    ) -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be at least 1, got {num_labels}")
        widths = tuple(_check_width(w) for w in boundary_widths)
        if len(set(widths)) != len(widths):
            raise ValueError(f"boundary_widths must be distinct, got {widths}")
        self.num_labels = int(num_labels)
        self.ignore_index = int(ignore_index)
        self.boundary_widths = widths
        # Configs reloaded from JSON may carry string keys.
        names = {int(k): str(v) for k, v in (id2label or {}).items()}
        self.label_names = [names.get(i, str(i)) for i in range(self.num_labels)]
        self._state = torch.zeros(1 + len(widths), self.num_labels, self.num_labels, dtype=torch.int64)

    def reset(self) -> None:
        """Forget everything accumulated (the state stays on its current device)."""
        self._state.zero_()

    @property
    def confusion(self) -> torch.Tensor:
        """(K, K) int64 confusion matrix over all valid pixels seen (a copy)."""
        return self._state[0].clone()

    @property
    def boundary_confusions(self) -> dict[int, torch.Tensor]:
        """Width d -> (K, K) int64 confusion matrix over the band of width d (copies)."""
        return {width: self._state[i + 1].clone() for i, width in enumerate(self.boundary_widths)}

    def update(self, predictions: Any, labels: Any) -> None:
        """Accumulate one batch.

        Args:
            predictions: integer tensor or array of shape (N, H, W) or (H, W), values in [0, num_labels).
            labels: integer tensor or array of the same shape, values in [0, num_labels) or ``ignore_index``.
        """
        predictions, labels, valid = _prepare(predictions, labels, self.num_labels, self.ignore_index)
        if labels.numel() == 0:
            return
        if self._state.device != labels.device:
            self._state = self._state.to(labels.device)
        index = labels * self.num_labels + predictions
        self._state[0] += _bincount_confusion(index, valid, self.num_labels)
        if self.boundary_widths:
            bands = _bands(labels, valid, self.boundary_widths)
            for i, width in enumerate(self.boundary_widths):
                self._state[i + 1] += _bincount_confusion(index, bands[width], self.num_labels)

    def _check_compatible(self, num_labels: int, ignore_index: int, boundary_widths: tuple[int, ...]) -> None:
        mine = (self.num_labels, self.ignore_index, self.boundary_widths)
        theirs = (num_labels, ignore_index, boundary_widths)
        if mine != theirs:
            raise ValueError(
                f"cannot combine metrics with (num_labels, ignore_index, boundary_widths) = {theirs} into {mine}"
            )

    def merge(self, other: SegmentationMetrics) -> None:
        """Add ``other``'s accumulated matrices to this one's (same num_labels, ignore_index and widths)."""
        self._check_compatible(other.num_labels, other.ignore_index, other.boundary_widths)
        self._state += other._state.to(self._state.device)

    def state_tensor(self) -> torch.Tensor:
        """All matrices as one int64 tensor of shape (1 + len(boundary_widths), K, K): the full confusion first,
        then one per width in ``boundary_widths`` order. A copy, on the accumulator's device, ready to all_reduce."""
        return self._state.clone()

    def load_state_tensor(self, state: torch.Tensor) -> None:
        """Replace the accumulated matrices by ``state``, a tensor shaped like ``state_tensor()``'s (kept on its
        device, copied)."""
        expected = tuple(self._state.shape)
        if tuple(state.shape) != expected:
            raise ValueError(f"state must have shape {expected}, got {tuple(state.shape)}")
        if state.is_floating_point() or state.is_complex():
            raise TypeError(f"state must hold integers, got dtype {state.dtype}")
        self._state = state.detach().to(torch.int64, copy=True)

    def compute(self) -> dict[str, Any]:
        """Scores over everything accumulated, NaN where undefined (e.g. nothing seen yet).

        Returns:
            ``mean_iou``, ``pixel_accuracy``, ``mean_accuracy``, ``boundary_iou_{d}px`` for every width d,
            ``boundary_mean_iou`` (Python floats) and ``per_class_iou`` as {label name: float}.
        """
        state = self._state.cpu()
        scores = scores_from_confusion(state[0])
        results: dict[str, Any] = {
            "mean_iou": scores["mean_iou"],
            "pixel_accuracy": scores["pixel_accuracy"],
            "mean_accuracy": scores["mean_accuracy"],
        }
        boundary = []
        for i, width in enumerate(self.boundary_widths):
            value = scores_from_confusion(state[i + 1])["mean_iou"]
            results[f"boundary_iou_{width}px"] = value
            boundary.append(value)
        results["boundary_mean_iou"] = sum(boundary) / len(boundary) if boundary else math.nan
        results["per_class_iou"] = dict(zip(self.label_names, scores["per_class_iou"]))
        return results
