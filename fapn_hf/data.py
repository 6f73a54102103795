"""Semantic segmentation data from `datasets`: loading, label mapping, validation and the Trainer-facing dataset.

Three kinds of source load the same way (`load_segmentation_dataset`):

- `"demo"`: the built-in synthetic set (`fapn_hf.demo_data`), generated from a seed, no download;
- a local folder: either a dataset saved with `save_to_disk`, or an `imagefolder` whose `metadata.csv` has the
  columns `file_name,annotation_file_name` (images and label PNGs side by side);
- a Hub id of a parquet data set, e.g. `"scene_parse_150"` mirrors in parquet (`datasets` 5 runs no scripts).

Samples are decoded here rather than by `datasets`, so that a broken file is reported with its sample index and
path. `check_samples` scans a split before training and applies the bad-sample policy: `"fail"` raises a
`DataError` listing the problems, `"skip"` drops those samples and counts them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from datasets import Dataset, DatasetDict, Image, load_dataset, load_from_disk

from .image_processing_fapn import normalize
from .labels import LABEL_MAPPINGS, lookup_table

logger = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("fail", "skip")


class DataError(ValueError):
    """A sample that cannot be used: unreadable file, image/label size mismatch, label values outside the map."""


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def load_segmentation_dataset(
    name: str = "demo",
    *,
    config_name: str | None = None,
    revision: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    validation_split: str = "validation",
    validation_fraction: float = 0.1,
    seed: int = 0,
    demo_options: dict[str, Any] | None = None,
) -> DatasetDict:
    """Loads a segmentation data set as a `DatasetDict` with splits `"train"` (when the source has it) and
    `"validation"`, and columns
    `"image"` and `"label"` (both `datasets.Image` features that are not decoded: rows hold the bytes and path).

    Args:
        name: `"demo"`, a local folder (saved dataset or imagefolder with `metadata.csv`) or a Hub data set id.
        image_column, label_column: the source's column names, renamed to `"image"` and `"label"`.
        train_split, validation_split: the source's split names. Without a validation split, a deterministic
            `validation_fraction` of the training split is held out.
        demo_options: keyword arguments of `fapn_hf.demo_data.make_demo_splits` for `name="demo"`.
    """
    if name == "demo":
        from .demo_data import make_demo_splits

        splits = make_demo_splits(seed=seed, **(demo_options or {}))
        return _standardise(splits, "image", "label", "train", "validation", validation_fraction, seed)
    path = Path(name)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, Dataset):
            loaded = DatasetDict({train_split: loaded})
    elif path.is_dir():
        if not (path / "metadata.csv").exists() and not any(path.glob("*/metadata.csv")):
            raise FileNotFoundError(
                f"{path} is neither a saved dataset (save_to_disk) nor an imagefolder with a metadata.csv holding the "
                "columns file_name,annotation_file_name"
            )
        loaded = load_dataset("imagefolder", data_dir=str(path))
        # imagefolder turns metadata.csv's `annotation_file_name` into an "annotation" image column.
        if label_column not in loaded[next(iter(loaded))].column_names:
            label_column = "annotation"
    else:
        loaded = load_dataset(name, config_name, revision=revision)
    return _standardise(loaded, image_column, label_column, train_split, validation_split, validation_fraction, seed)


def _standardise(
    splits: DatasetDict,
    image_column: str,
    label_column: str,
    train_split: str,
    validation_split: str,
    validation_fraction: float,
    seed: int,
) -> DatasetDict:
    if validation_split in splits:
        result = DatasetDict({"validation": splits[validation_split]})
        if train_split in splits:
            result["train"] = splits[train_split]
    elif train_split in splits:
        if not 0 < validation_fraction < 1:
            raise ValueError(
                f"no split {validation_split!r}, and validation_fraction={validation_fraction} is not in (0, 1)"
            )
        held_out = splits[train_split].train_test_split(test_size=validation_fraction, seed=seed, shuffle=True)
        result = DatasetDict({"train": held_out["train"], "validation": held_out["test"]})
    else:
        raise ValueError(
            f"the data set has neither split {train_split!r} nor {validation_split!r}; it has {sorted(splits)}"
        )
    columns = next(iter(result.values())).column_names
    for column, role in ((image_column, "image_column"), (label_column, "label_column")):
        if column not in columns:
            raise ValueError(f"{role}={column!r} is not a column of the data set; its columns are {columns}")
    for split, dataset in result.items():
        dataset = dataset.select_columns([image_column, label_column])
        if image_column != "image":
            dataset = dataset.rename_column(image_column, "image")
        if label_column != "label":
            dataset = dataset.rename_column(label_column, "label")
        # Keep files undecoded: decoding happens in `decode_sample`, which names the sample that fails.
        result[split] = dataset.cast_column("image", Image(decode=False)).cast_column("label", Image(decode=False))
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Decoding and label maps
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class LabelSpec:
    """How raw label values become class ids: an optional raw-id mapping, then optional label reduction.

    Args:
        num_labels: class ids are `[0, num_labels)`.
        ignore_index: the value that marks unlabelled pixels.
        mapping: a name in `LABEL_MAPPINGS` (e.g. `"cityscapes"`: 34 raw ids -> 19 train ids) or a dict.
        reduce_labels: 0 becomes ignore and every other value is lowered by one (ADE20K's convention).
    """

    num_labels: int
    ignore_index: int = 255
    mapping: str | dict[int, int] | None = None
    reduce_labels: bool = False
    _table: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.mapping, str):
            if self.mapping not in LABEL_MAPPINGS:
                raise ValueError(f"unknown label mapping {self.mapping!r}; known: {sorted(LABEL_MAPPINGS)}")
            self.mapping = LABEL_MAPPINGS[self.mapping]
        if self.mapping:
            self._table = lookup_table(self.mapping, self.ignore_index)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Raw label map (H, W) -> int64 class ids with `ignore_index`."""
        labels = raw.astype(np.int64)
        if self._table is not None:
            if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(self._table):
                raise DataError(f"raw label values must lie in [0, {len(self._table)}) for the label mapping")
            labels = self._table[labels]
        if self.reduce_labels:
            labels = np.where(labels == 0, self.ignore_index, np.where(labels == self.ignore_index, labels, labels - 1))
        return labels

    def invalid_values(self, labels: np.ndarray) -> list[int]:
        """The values of `labels` that are neither class ids nor the ignore index."""
        values = np.unique(labels)
        return [int(v) for v in values if not (0 <= v < self.num_labels or v == self.ignore_index)]


def _describe(record: dict[str, Any] | None) -> str:
    path = (record or {}).get("path")
    return f"file {path}" if path else "in-memory file"


def _open(record: dict[str, Any] | None) -> PIL.Image.Image:
    if record is None:
        raise DataError("missing file")
    if record.get("bytes") is not None:
        image = PIL.Image.open(io.BytesIO(record["bytes"]))
    elif record.get("path"):
        image = PIL.Image.open(record["path"])
    else:
        raise DataError("the record holds neither bytes nor a path")
    image.load()
    return image


def decode_sample(row: dict[str, Any], index: int, spec: LabelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Decodes row `index` into an RGB image `(H, W, 3)` uint8 and class ids `(H, W)` int64.

    Raises `DataError` naming the sample index and file for unreadable files, label images with several channels,
    image/label size mismatches and label values outside the label map.
    """
    try:
        image = _open(row["image"])
    except (OSError, DataError, SyntaxError, ValueError) as error:
        raise DataError(f"sample {index}: cannot read the image ({_describe(row['image'])}): {error}") from error
    try:
        label_image = _open(row["label"])
    except (OSError, DataError, SyntaxError, ValueError) as error:
        raise DataError(f"sample {index}: cannot read the label ({_describe(row['label'])}): {error}") from error
    if label_image.mode in ("RGB", "RGBA", "CMYK", "LA"):
        raise DataError(
            f"sample {index}: the label ({_describe(row['label'])}) is a {label_image.mode} image; expected a "
            "single-channel map of class ids (mode L, P, I or I;16)"
        )
    if image.size != label_image.size:
        raise DataError(
            f"sample {index}: image ({_describe(row['image'])}) is {image.height}x{image.width} but its label "
            f"({_describe(row['label'])}) is {label_image.height}x{label_image.width} (HxW)"
        )
    rgb = np.array(image.convert("RGB"))
    try:
        labels = spec.apply(np.array(label_image))
    except DataError as error:
        raise DataError(f"sample {index} ({_describe(row['label'])}): {error}") from error
    invalid = spec.invalid_values(labels)
    if invalid:
        shown = ", ".join(map(str, invalid[:10])) + (", ..." if len(invalid) > 10 else "")
        raise DataError(
            f"sample {index}: label ({_describe(row['label'])}) has values [{shown}] outside the label map: "
            f"expected [0, {spec.num_labels}) or {spec.ignore_index}"
            + ("" if spec.reduce_labels else "; if 0 means 'unlabelled' and classes start at 1, use reduce_labels")
        )
    return rgb, labels


@dataclass
class DataReport:
    """What `check_samples` found in one split."""

    split: str
    num_samples: int
    bad_samples: list[tuple[int, str]] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.bad_samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "num_samples": self.num_samples,
            "num_skipped": self.num_skipped,
            "skipped": [{"index": i, "reason": reason} for i, reason in self.bad_samples],
        }


def check_samples(
    dataset: Dataset, spec: LabelSpec, policy: str = "fail", split: str = "train"
) -> tuple[Dataset, DataReport]:
    """Decodes every sample once and applies the bad-sample policy.

    Returns the dataset (without the bad samples under `"skip"`) and a report. Under `"fail"` a `DataError` lists
    every bad sample (index, file and reason) before any training starts.
    """
    if policy not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"bad-sample policy must be one of {BAD_SAMPLE_POLICIES}, got {policy!r}")
    report = DataReport(split, len(dataset))
    for index, row in enumerate(dataset):
        try:
            decode_sample(row, index, spec)
        except DataError as error:
            report.bad_samples.append((index, str(error)))
    if report.bad_samples and policy == "fail":
        listed = "\n  ".join(reason for _, reason in report.bad_samples[:20])
        more = f"\n  ... and {report.num_skipped - 20} more" if report.num_skipped > 20 else ""
        raise DataError(
            f"{report.num_skipped} of {len(dataset)} {split} samples cannot be used:\n  {listed}{more}\n"
            "Fix them, or pass bad_sample_policy='skip' to leave them out."
        )
    if report.bad_samples:
        logger.warning("%s: skipping %d of %d samples: %s", split, report.num_skipped, len(dataset), report.bad_samples)
        bad = {index for index, _ in report.bad_samples}
        dataset = dataset.select([i for i in range(len(dataset)) if i not in bad])
    return dataset, report


# ---------------------------------------------------------------------------------------------------------------------
# The dataset the Trainer sees
# ---------------------------------------------------------------------------------------------------------------------


class SegmentationDataset(torch.utils.data.Dataset):
    """Decoded, transformed and normalised samples: `{"pixel_values": (3, H, W) float, "labels": (H, W) int64}`.

    Random transforms draw from `numpy.random.default_rng([seed, epoch, index])`, so a sample's augmentation does
    not depend on the process, the data loader worker or a resumed run; the Trainer callback
    `fapn_hf.training.EpochSetter` advances `epoch`.

    Args:
        dataset: rows with undecoded `"image"` and `"label"` (see `load_segmentation_dataset`).
        spec: the label map.
        transform: `transform(image, labels, rng) -> (image, labels)` on NumPy arrays (training), or
            `transform(image, labels) -> (image, labels)` when `random=False` (evaluation).
        image_mean, image_std: normalisation after scaling to [0, 1] (the model's image processor's values).
    """

    def __init__(
        self,
        dataset: Dataset,
        spec: LabelSpec,
        transform: Callable[..., tuple[np.ndarray, np.ndarray]] | None,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        random: bool = True,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.spec = spec
        self.transform = transform
        self.random = random
        self.seed = seed
        self.epoch = 0
        self.mean, self.std = tuple(image_mean), tuple(image_std)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The decoded, untransformed sample: RGB `(H, W, 3)` uint8 and class ids `(H, W)` int64."""
        return decode_sample(self.dataset[index], index, self.spec)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, labels = self.load(index)
        if self.transform is not None:
            if self.random:
                rng = np.random.default_rng([self.seed, self.epoch, index])
                image, labels = self.transform(image, labels, rng)
            else:
                image, labels = self.transform(image, labels)
        return {"pixel_values": self.normalise(image), "labels": torch.from_numpy(np.ascontiguousarray(labels)).long()}

    def normalise(self, image: np.ndarray) -> torch.Tensor:
        return normalize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), self.mean, self.std)


@dataclass
class SegmentationCollator:
    """Stacks samples, padding images with 0 and labels with the ignore index to the largest size in the batch."""

    ignore_index: int = 255

    def __call__(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        height = max(s["pixel_values"].shape[1] for s in samples)
        width = max(s["pixel_values"].shape[2] for s in samples)
        pixel_values = torch.zeros(len(samples), 3, height, width)
        labels = torch.full((len(samples), height, width), self.ignore_index, dtype=torch.long)
        for i, sample in enumerate(samples):
            h, w = sample["pixel_values"].shape[1:]
            pixel_values[i, :, :h, :w] = sample["pixel_values"]
            labels[i, :h, :w] = sample["labels"]
        return {"pixel_values": pixel_values, "labels": labels}


__all__ = [
    "BAD_SAMPLE_POLICIES",
    "DataError",
    "DataReport",
    "LabelSpec",
    "SegmentationCollator",
    "SegmentationDataset",
    "check_samples",
    "decode_sample",
    "load_segmentation_dataset",
]
