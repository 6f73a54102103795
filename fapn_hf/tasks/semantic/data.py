"""Semantic segmentation data from `datasets`: loading, label mapping, validation and the Trainer-facing dataset.

Four kinds of source load the same way (`load_segmentation_dataset`):

- `"demo"`: the built-in synthetic set (`fapn_hf.tasks.semantic.demo_data`), generated from a seed, no download;
- a data set folder as it is downloaded: Cityscapes, ADE20K, COCO-Stuff-10K / -164K or Pascal VOC 2012 (with SBD),
  recognised by its files and paired by its own naming rules (`fapn_hf.tasks.semantic.layouts`), with the label set,
  mapping and reduction it implies (`label_settings`);
- another local folder: a dataset saved with `save_to_disk`, parquet files (e.g. a downloaded copy of a Hub data
  set), or an `imagefolder` whose `metadata.csv` has the columns `file_name,annotation_file_name` (images and label
  PNGs side by side);
- a Hub id of a parquet data set, e.g. `"scene_parse_150"` mirrors in parquet (`datasets` 5 runs no scripts).

Samples are decoded here rather than by `datasets`, so that a broken file is reported with its sample index and
path, and images follow `decode_image`'s rules (EXIF orientation, bit depth, transparency) like every other path.
`check_samples` scans a split before training and applies the bad-sample policy: `"fail"` raises a `DataError`
listing the problems, `"skip"` drops those samples and counts them; a split left with no sample, or with no labelled
pixel, is an error either way. A folder layout's split is checked from its index (missing files, unpaired files,
sizes, read from the files' headers) and a few decoded samples, so that a large folder starts training in seconds;
the other samples are decoded, and their values checked, when they are used.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from datasets import Dataset, DatasetDict, Image, load_dataset, load_from_disk
from torchvision import tv_tensors

from ...labels import LABEL_MAPPINGS, check_label_values, lookup_table
from ...modeling.image_decoding import decode_image_bytes, png_pixels, upright
from ..base import DataReport as BaseDataReport
from .layouts import INDEX_PROBLEM, FolderLayout, describe_layouts, find_layout, read_mat_label, spread

logger = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("fail", "skip")
# Samples of a folder layout's split that `check_samples` decodes (evenly spread): the index checks the rest.
SPOT_CHECK_SAMPLES = 8


class DataError(ValueError):
    """A sample that cannot be used: unreadable file, image/label size mismatch, label values outside the map."""


class MissingSplitError(ValueError):
    """The data set has no split of that name (`split`); `available` lists the ones it has."""

    def __init__(self, message: str, split: str, available: list[str]) -> None:
        super().__init__(message)
        self.split, self.available = split, available


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
    train_split: str | None = "train",
    validation_split: str = "validation",
    validation_fraction: float | None = None,
    seed: int = 0,
    demo_options: dict[str, Any] | None = None,
    label_mapping: str | None = None,
    index_cache_dir: str | os.PathLike | None = None,
) -> DatasetDict:
    """Loads a segmentation data set as a `DatasetDict` with splits `"train"` and `"validation"`, and columns
    `"image"` and `"label"` (both `datasets.Image` features that are not decoded: rows hold the bytes and path; a
    folder layout's rows hold paths only, and its `"index_problem"` column what indexing found wrong).

    Args:
        name: `"demo"`, a data set folder as downloaded (Cityscapes, ADE20K, COCO-Stuff-10K / -164K, Pascal VOC
            2012: `fapn_hf.tasks.semantic.layouts`), another local folder (saved with `save_to_disk`, parquet files
            such as a downloaded copy of a Hub data set, or an imagefolder with `metadata.csv`) or a Hub data set id.
        image_column, label_column: the source's column names, renamed to `"image"` and `"label"` (a folder layout
            has its own).
        train_split: the source's training split, or None to load only the validation split (evaluation).
        validation_split: the source's split that becomes `"validation"`. A folder layout takes its own split
            names and the usual other spellings (`train`/`training`, `val`/`validation`).
        validation_fraction: only when set, the validation split is instead a deterministic (by `seed`) fraction
            held out of `train_split`; the source's own validation split, if any, is then not used.
        demo_options: keyword arguments of `fapn_hf.tasks.semantic.demo_data.make_demo_splits` for `name="demo"`.
        label_mapping: for a folder layout with several kinds of label file (Cityscapes' `*_labelIds.png` and
            `*_labelTrainIds.png`), the mapping chooses which are read (`label_settings`); None: the layout's choice.
        index_cache_dir: where a folder layout's index is cached (default: `layouts.index_cache_dir()`).

    Raises `ValueError` naming the available splits when a requested split does not exist: nothing is carved out of
    the training data unless `validation_fraction` asks for it.
    """
    if name == "demo":
        from .demo_data import make_demo_splits

        splits = make_demo_splits(seed=seed, **(demo_options or {}))
        image_column, label_column = "image", "label"
    elif (folder := find_layout(name)) is not None:
        return _load_folder(
            folder, train_split, validation_split, validation_fraction, seed, label_mapping, index_cache_dir
        )
    else:
        splits, label_column = _load_source(name, config_name, revision, label_column, train_split or "train")
    result = select_splits(splits, train_split, validation_split, validation_fraction, seed)
    return _standardise(result, image_column, label_column)


def _load_folder(
    folder: FolderLayout,
    train_split: str | None,
    validation_split: str,
    validation_fraction: float | None,
    seed: int,
    label_mapping: str | None,
    cache_dir: str | os.PathLike | None,
) -> DatasetDict:
    """The splits asked for of a recognised folder layout, each indexed (not decoded) on its own."""
    available = folder.splits()
    train = None if train_split is None else folder.split_name(train_split)
    validation = folder.split_name(validation_split)
    hint = folder.layout.missing_split_hint
    if train is not None and train not in available and train not in folder.layout.unlabelled:
        raise ValueError(
            f"{folder.describe()} has no split {train!r} to train on; it has {available}{hint(folder.root, train)}"
        )
    if validation_fraction is None and validation not in available and validation not in folder.layout.unlabelled:
        carve = f", or validation_fraction to hold one out of {train!r}" if train else ""
        raise MissingSplitError(
            f"{folder.describe()} has no split {validation!r}; it has {available}. Name an existing one as the "
            f"validation split{carve}{hint(folder.root, validation)}",
            validation,
            available,
        )
    wanted = [train, validation if validation_fraction is None else None]
    splits = DatasetDict(
        {split: folder.index(split, label_mapping, cache_dir) for split in dict.fromkeys(wanted) if split is not None}
    )
    return select_splits(splits, train, validation, validation_fraction, seed)


def _load_source(
    name: str, config_name: str | None, revision: str | None, label_column: str, train_split: str
) -> tuple[DatasetDict, str]:
    """The source's splits, and the label column (an imagefolder's own name for it when it has exactly one)."""
    path = Path(name)
    if path.is_file():
        raise ValueError(
            f"dataset {name!r} is a file; expected 'demo', a folder (saved with save_to_disk, parquet files, or "
            "images with a metadata.csv) or a Hub data set id"
        )
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, Dataset):
            loaded = DatasetDict({train_split: loaded})
        return loaded, label_column
    if path.is_dir() and any(path.rglob("*.parquet")):
        # A local copy of a Hub parquet data set (`hf download --repo-type dataset ...`): split names come from the
        # file names (data/train-00000-of-00001.parquet) or the README's configs, as on the Hub.
        return load_dataset(str(path), config_name), label_column
    if path.is_dir():
        metadata = sorted([*path.glob("metadata.csv"), *path.glob("*/metadata.csv")])
        if not metadata:
            inside = next((find_layout(p) for p in path.absolute().parents if find_layout(p) is not None), None)
            hint = f"; it lies inside {inside.describe()}: pass that folder" if inside is not None else ""
            raise FileNotFoundError(
                f"{path} is neither a saved dataset (save_to_disk), nor parquet files, nor an imagefolder with a "
                "metadata.csv holding the columns file_name,annotation_file_name, nor a data set folder as "
                f"downloaded: {describe_layouts()}{hint}"
            )
        return load_dataset("imagefolder", data_dir=str(path)), _imagefolder_label_column(metadata[0], label_column)
    return load_dataset(name, config_name, revision=revision), label_column


def _imagefolder_label_column(metadata: Path, label_column: str) -> str:
    """imagefolder reads `<name>_file_name` columns of metadata.csv as image columns called `<name>`: the label
    column is `label_column` when it is one of them, else the only one there is."""
    with metadata.open(newline="") as file:
        header = next(csv.reader(file), [])
    file_columns = [c[: -len("_file_name")] for c in header if c.endswith("_file_name") and c != "file_name"]
    plain = [c for c in header if c != "file_name" and not c.endswith("_file_name")]
    if label_column in file_columns:
        return label_column
    if label_column not in plain and len(file_columns) == 1:
        return file_columns[0]
    if label_column in plain or not file_columns:
        column = label_column if label_column in plain else (plain[0] if plain else None)
        rename = f"; rename {column!r} to {column}_file_name if it holds the label files" if column else ""
        raise ValueError(
            f"{metadata} has the columns {header}: none names label files. imagefolder reads label images only from "
            f"a column whose name ends in _file_name, e.g. annotation_file_name{rename}"
        )
    raise ValueError(
        f"{metadata} has several image columns {file_columns}; choose the labels with label_column (one of them)"
    )


def select_splits(
    splits: DatasetDict,
    train_split: str | None,
    validation_split: str,
    validation_fraction: float | None,
    seed: int,
) -> DatasetDict:
    available = sorted(splits)
    if train_split is not None and train_split not in splits:
        raise ValueError(f"the data set has no split {train_split!r} to train on; it has {available}")
    if validation_fraction is not None:
        if train_split is None:
            raise ValueError("validation_fraction holds a validation set out of the training split: name train_split")
        if not 0 < validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}")
        if validation_split in splits:
            logger.warning(
                "the source's split %r is not used: validation_fraction=%s holds out part of %r instead",
                validation_split,
                validation_fraction,
                train_split,
            )
        held_out = splits[train_split].train_test_split(test_size=validation_fraction, seed=seed, shuffle=True)
        return DatasetDict({"train": held_out["train"], "validation": held_out["test"]})
    if validation_split not in splits:
        carve = f", or validation_fraction to hold one out of {train_split!r}" if train_split else ""
        raise MissingSplitError(
            f"the data set has no split {validation_split!r}; it has {available}. Name an existing one as the "
            f"validation split{carve}",
            validation_split,
            available,
        )
    result = DatasetDict({"validation": splits[validation_split]})
    if train_split is not None:
        result["train"] = splits[train_split]
    return result


def _standardise(result: DatasetDict, image_column: str, label_column: str) -> DatasetDict:
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
    # Mapping and reduction of 8-bit raw values as one 256-entry lookup (None: no change); `_compact` says whether
    # 8-bit raw values give 8-bit class ids.
    _lut8: np.ndarray | None = field(default=None, init=False, repr=False)
    _compact: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.mapping, str):
            if self.mapping not in LABEL_MAPPINGS:
                raise ValueError(f"unknown label mapping {self.mapping!r}; known: {sorted(LABEL_MAPPINGS)}")
            self.mapping = LABEL_MAPPINGS[self.mapping]
        if self.mapping:
            self._table = lookup_table(self.mapping, self.ignore_index)
        if 0 <= self.ignore_index < 256:
            lut = self._wide(np.arange(256, dtype=np.uint8))
            if lut.min() >= 0 and lut.max() < 256:
                self._compact = True
                self._lut8 = None if (lut == np.arange(256)).all() else lut.astype(np.uint8)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Raw label map (H, W) -> int64 class ids with `ignore_index`."""
        return self.class_ids(raw).astype(np.int64, copy=False)

    def class_ids(self, raw: np.ndarray | PIL.Image.Image) -> np.ndarray:
        """Raw label map (H, W) (an array, or a single-channel PIL image) -> class ids with `ignore_index`, as
        `apply`, in uint8 where the raw values, the mapped ids and the ignore index all fit (8-bit label files:
        one 256-entry lookup, several times less memory traffic than int64), else int64. The result is a new
        array."""
        if isinstance(raw, np.ndarray) and raw.dtype == np.uint8 and raw.ndim == 2 and self._compact:
            if self._lut8 is None:
                return raw.copy()
            raw = PIL.Image.fromarray(raw)  # mode L: PIL's table lookup, below
        if isinstance(raw, PIL.Image.Image):
            if raw.mode == "L" and self._compact:
                # PIL applies a 256-entry table to an 8-bit image about twice as fast as NumPy's indexing.
                return np.array(raw if self._lut8 is None else raw.point(self._lut8.tolist()))
            raw = np.array(raw)
        if raw.dtype == np.uint8 and self._compact:
            return raw.copy() if self._lut8 is None else self._lut8[raw]
        return self._wide(raw)

    def _wide(self, raw: np.ndarray) -> np.ndarray:
        labels = raw.astype(np.int64)
        if self._table is not None:
            if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(self._table):
                raise DataError(f"raw label values must lie in [0, {len(self._table)}) for the label mapping")
            labels = self._table[labels]
        if self.reduce_labels:
            labels = np.where(labels == 0, self.ignore_index, np.where(labels == self.ignore_index, labels, labels - 1))
        return labels

    def hint(self, invalid: list[int]) -> str:
        """What probably went wrong when labels hold the `invalid` values: raw ids of a known data set that need
        its mapping (e.g. Cityscapes' 34 ids for 19 classes), or a 1-based map that needs `reduce_labels`."""
        if not self.mapping and invalid:
            for name, mapping in LABEL_MAPPINGS.items():
                if len(set(mapping.values())) == self.num_labels and all(0 <= v <= max(mapping) for v in invalid):
                    return (
                        f"; these look like raw {name} ids: map them with label_mapping={name!r} "
                        f"(--label_mapping {name} for fapn-train and fapn-evaluate)"
                    )
        if not self.reduce_labels:
            return "; if 0 means 'unlabelled' and classes start at 1, use reduce_labels"
        return ""


def _describe(record: dict[str, Any] | None) -> str:
    path = (record or {}).get("path")
    return f"file {path}" if path else "in-memory file"


def _file_bytes(record: dict[str, Any] | None) -> bytes:
    """The file of a record: its bytes, or those of the file at its path (one read: decoders then work in memory)."""
    if record is None:
        raise DataError("missing file")
    if record.get("bytes") is not None:
        return record["bytes"]
    if record.get("path"):
        return Path(record["path"]).read_bytes()
    raise DataError("the record holds neither bytes nor a path")


def _is_mat(record: dict[str, Any] | None) -> bool:
    return bool(record) and str(record.get("path") or "").lower().endswith(".mat")


def _read_label(record: dict[str, Any] | None, index: int) -> np.ndarray | PIL.Image.Image:
    """The raw label map `(H, W)` of a record: a single-channel PIL image (turned upright by its EXIF tag, if any; a
    palette PNG holds its indices), or an array of the same values: a gray PNG that `png_pixels` decodes (8-bit
    uint8 as mode L, 16-bit uint16 as mode I;16) and a `.mat` label (`layouts.read_mat_label`)."""
    try:
        if _is_mat(record):
            source = io.BytesIO(record["bytes"]) if record.get("bytes") is not None else record["path"]
            return read_mat_label(source)
        data = _file_bytes(record)
        pixels = png_pixels(data)
        if pixels is not None and pixels.ndim == 2:  # a gray PNG: PIL would give these values (no EXIF, no alpha)
            return pixels
        label_image = PIL.Image.open(io.BytesIO(data))
        label_image.load()
        label_image = upright(label_image)
    except (OSError, DataError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise DataError(f"sample {index}: cannot read the label ({_describe(record)}): {error}") from error
    except Exception as error:  # scipy's MatReadError and the like: a broken file, reported with its sample
        raise DataError(f"sample {index}: cannot read the label ({_describe(record)}): {error!r}") from error
    if label_image.mode in ("RGB", "RGBA", "CMYK", "LA"):
        raise DataError(
            f"sample {index}: the label ({_describe(record)}) is a {label_image.mode} image; expected a "
            "single-channel map of class ids (mode L, P, I or I;16)"
        )
    return label_image


def decode_sample(row: dict[str, Any], index: int, spec: LabelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Decodes row `index` into an RGB image `(H, W, 3)` uint8 (by `decode_image`'s rules: EXIF orientation, bit
    depth, transparency) and class ids `(H, W)` int64 (the label image turned upright by its EXIF tag, if any; a
    `.mat` label as `layouts.read_mat_label` reads it).

    Raises `DataError` naming the sample index and file for unreadable files, label images with several channels,
    image/label size mismatches and label values outside the label map.
    """
    rgb, labels = _decode(row, index, spec)
    return rgb, labels.astype(np.int64, copy=False)


def _decode(row: dict[str, Any], index: int, spec: LabelSpec) -> tuple[np.ndarray, np.ndarray]:
    """`decode_sample` with the class ids in `LabelSpec.class_ids`' compact dtype (uint8 where they fit)."""
    try:
        data = _file_bytes(row["image"])
    except (OSError, DataError) as error:
        raise DataError(f"sample {index}: cannot read the image ({_describe(row['image'])}): {error}") from error
    try:
        # PNG through libspng where it gives PIL's pixels (`png_pixels`), everything else through PIL.
        rgb = decode_image_bytes(data, name=_describe(row["image"]))
    except ValueError as error:  # names the file
        raise DataError(f"sample {index}: cannot read the image: {error}") from error
    raw = _read_label(row["label"], index)
    height, width = raw.shape[:2] if isinstance(raw, np.ndarray) else (raw.height, raw.width)
    if rgb.shape[:2] != (height, width):
        raise DataError(
            f"sample {index}: image ({_describe(row['image'])}) is {rgb.shape[0]}x{rgb.shape[1]} but its label "
            f"({_describe(row['label'])}) is {height}x{width} (HxW, EXIF orientation applied)"
        )
    try:
        labels = spec.class_ids(raw)
    except DataError as error:
        raise DataError(f"sample {index} ({_describe(row['label'])}): {error}") from error
    try:
        check_label_values(
            labels, spec.num_labels, spec.ignore_index, name=f"labels ({_describe(row['label'])})", hint=spec.hint
        )
    except ValueError as error:
        raise DataError(f"sample {index}: {error}") from error
    return rgb, labels


@dataclass
class DataReport(BaseDataReport):
    """What `check_samples` found in one split (`fapn_hf.tasks.base.DataReport`), and the labelled pixels."""

    labelled_pixels: int = 0

    def counts(self) -> dict[str, Any]:
        return {"labelled_pixels": self.labelled_pixels}


def check_samples(
    dataset: Dataset, spec: LabelSpec, policy: str = "fail", split: str = "train"
) -> tuple[Dataset, DataReport]:
    """Decodes every sample once and applies the bad-sample policy.

    Returns the dataset (without the bad samples under `"skip"`) and a report. Under `"fail"` a `DataError` lists
    every bad sample (index, file and reason) before any training starts. A split with no usable sample, or whose
    labels are all `ignore_index`, raises a `DataError` under either policy: its scores would be NaN.

    A folder layout's split (its rows carry the index's `"index_problem"`) is not decoded whole: the samples its
    index found wrong (a missing or unpaired file, an unreadable header, image and label of different sizes) are the
    bad ones, and `SPOT_CHECK_SAMPLES` others, evenly spread, are decoded to catch label values outside the label
    map (e.g. raw ids without their mapping) before training. A split whose decoded samples hold no labelled pixel
    is then only warned about.
    """
    if policy not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"bad-sample policy must be one of {BAD_SAMPLE_POLICIES}, got {policy!r}")
    report = DataReport(split, len(dataset))
    if INDEX_PROBLEM in dataset.column_names:
        problems = dataset[INDEX_PROBLEM]
        report.bad_samples = [
            (index, f"sample {index}: {problem}") for index, problem in enumerate(problems) if problem
        ]
        indices = spread([index for index, problem in enumerate(problems) if not problem], SPOT_CHECK_SAMPLES)
        report.decoded_samples = len(indices)
    else:
        indices = range(len(dataset))
    for index in indices:
        try:
            _, labels = _decode(dataset[index], index, spec)
        except DataError as error:
            report.bad_samples.append((index, str(error)))
            continue
        report.labelled_pixels += int(np.count_nonzero(labels != spec.ignore_index))
    report.bad_samples.sort()
    listed = "\n  ".join(reason for _, reason in report.bad_samples[:20])
    listed += f"\n  ... and {report.num_skipped - 20} more" if report.num_skipped > 20 else ""
    if report.bad_samples and policy == "fail":
        raise DataError(
            f"{report.num_skipped} of {len(dataset)} {split} samples cannot be used:\n  {listed}\n"
            "Fix them, or pass bad_sample_policy='skip' to leave them out."
        )
    if report.num_skipped == len(dataset):
        reason = f":\n  {listed}" if listed else ""
        raise DataError(f"the {split} split has no usable sample ({len(dataset)} samples){reason}")
    if report.labelled_pixels == 0 and report.decoded_samples is not None:
        logger.warning(
            "%s: the %d decoded samples have no labelled pixel (every label is ignore_index=%d%s)",
            split,
            report.decoded_samples,
            spec.ignore_index,
            " after the label mapping" if spec.mapping else "",
        )
    elif report.labelled_pixels == 0:
        raise DataError(
            f"the {split} split has no labelled pixel: every label is ignore_index={spec.ignore_index}"
            + (" after the label mapping" if spec.mapping else "")
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
    """Samples for the Trainer: `{"pixel_values": (3, h, w) float, "labels": (H, W) int64}`.

    Images are decoded by `decode_image`'s rules and turned into `pixel_values` by the model's image processor, the
    one place that does so. With a `transform` (training augmentation), the transform sets the geometry of image and
    labels and the processor only rescales and normalises. Without one (evaluation), the processor also applies its
    resize, while the labels keep their original resolution: predictions are scored there, after their logits are
    resized to the label's size (the mmseg / detectron2 convention).

    Random transforms are called with the seed `(seed, epoch, index)`, so a sample's augmentation does not depend on
    the process, the data loader worker or a resumed run; the Trainer callback `fapn_hf.trainer.EpochSetter`
    advances `epoch`.

    Args:
        dataset: rows with undecoded `"image"` and `"label"` (see `load_segmentation_dataset`).
        spec: the label map.
        transform: `transform(image, labels, seed) -> (image, labels)` on a `tv_tensors.Image` (3, H, W) uint8 and a
            `tv_tensors.Mask` (H, W) int64, e.g. `fapn_hf.transforms.TrainAugmentation` (training), or
            `transform(image, labels) -> (image, labels)` when `random=False`; None for evaluation.
        image_processor: the model's `FaPNImageProcessor`.
    """

    def __init__(
        self,
        dataset: Dataset,
        spec: LabelSpec,
        transform: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None,
        image_processor: Any,
        random: bool = True,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.spec = spec
        self.transform = transform
        self.processor = image_processor
        self.random = random
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The decoded, untransformed sample: RGB `(H, W, 3)` uint8 and class ids `(H, W)` int64."""
        return decode_sample(self.dataset[index], index, self.spec)

    def samples(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every decoded sample in order, as `load` gives them."""
        return (self.load(index) for index in range(len(self)))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        # Class ids stay compact (uint8 where they fit) through the augmentation: int64 only for the crop.
        image, labels = _decode(self.dataset[index], index, self.spec)
        labels = torch.from_numpy(labels)
        if self.transform is not None:
            # torchvision.transforms.v2 types: the (3, H, W) uint8 image and the (H, W) label map, views of the arrays.
            image, labels = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(labels)
            if self.random:
                image, labels = self.transform(image, labels, (self.seed, self.epoch, index))
            else:
                image, labels = self.transform(image, labels)
            image, labels = image.as_subclass(torch.Tensor), labels.as_subclass(torch.Tensor)
        resize = {} if self.transform is None else {"do_resize": False}
        pixel_values = self.processor(images=image, return_tensors="pt", **resize)["pixel_values"][0]
        return {"pixel_values": pixel_values, "labels": labels.long()}


# The sizes the collator records: `image_sizes` of the processed images, `label_sizes` of their label maps.
SIZE_KEYS = ("image_sizes", "label_sizes")


@dataclass
class SegmentationCollator:
    """Stacks samples, padding images with 0 and labels with the ignore index to the largest size in the batch.

    The batch also holds each sample's unpadded `image_sizes` and `label_sizes` `(N, 2)`, so that evaluation can
    process every image at its own size and score it at its label's size; training drops them (`SIZE_KEYS`).
    """

    ignore_index: int = 255

    def __call__(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        image_sizes = torch.tensor([tuple(s["pixel_values"].shape[1:]) for s in samples], dtype=torch.long)
        label_sizes = torch.tensor([tuple(s["labels"].shape) for s in samples], dtype=torch.long)
        height, width = image_sizes.max(dim=0).values.tolist()
        pixel_values = torch.zeros(len(samples), 3, height, width)
        label_height, label_width = label_sizes.max(dim=0).values.tolist()
        labels = torch.full((len(samples), label_height, label_width), self.ignore_index, dtype=torch.long)
        for i, sample in enumerate(samples):
            h, w = sample["pixel_values"].shape[1:]
            pixel_values[i, :, :h, :w] = sample["pixel_values"]
            h, w = sample["labels"].shape
            labels[i, :h, :w] = sample["labels"]
        return {"pixel_values": pixel_values, "labels": labels, "image_sizes": image_sizes, "label_sizes": label_sizes}


__all__ = [
    "BAD_SAMPLE_POLICIES",
    "SIZE_KEYS",
    "DataError",
    "MissingSplitError",
    "DataReport",
    "LabelSpec",
    "SegmentationCollator",
    "SegmentationDataset",
    "check_samples",
    "decode_sample",
    "load_segmentation_dataset",
    "select_splits",
]
