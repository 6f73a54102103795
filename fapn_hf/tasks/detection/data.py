"""Detection, instance and panoptic segmentation data: loading, checking and the Trainer-facing dataset.

Sources (`load_detection_dataset`), all read lazily (rows hold paths or bytes; images and masks are decoded when a
sample is used):

- `"demo"`: the built-in synthetic shapes (`fapn_hf.tasks.detection.demo_data`);
- a COCO folder as downloaded: `annotations/instances_<split>.json` + `<split>/` images (`kind="instances"`), or
  `annotations/panoptic_<split>.json` + `panoptic_<split>/*.png` (in `annotations/` or beside it) + `<split>/` images
  (`kind="panoptic"`). COCO's category ids become contiguous 0-based ids in the order of their ids (panoptic: things
  first, then stuff, as `FaPNRCNNConfig.id2label` wants them); names come from the JSON (`coco_label_names`);
- a `datasets` source (saved with `save_to_disk`, parquet files, or a Hub id) in the schema of transformers'
  object-detection example: `image`, `objects` with COCO `bbox` `[x, y, w, h]`, 0-based `category`, `area`, `id`,
  optional `iscrowd` and per-object `segmentation` (COCO polygons, RLE, or their JSON text) or `mask` (an image).

Every source becomes rows with the canonical columns `image` (undecoded), `image_id`, `objects` (as above) and, for
panoptic data, `panoptic` (the undecoded RGB PNG, ids `r + 256 g + 256^2 b`, 0 = void) and `segments_info` (JSON
text of `[{"id", "category_id" (contiguous), "iscrowd", ...}]`); a COCO folder's rows also carry `width`, `height`
(from the JSON) and `index_problem` (what indexing found wrong: a missing file, an unknown category).

`check_samples` applies the bad-sample policy (`"fail"` raises a `DataError` listing sample, file and reason;
`"skip"` drops them): missing or unreadable images, boxes outside the image (beyond `BOX_TOLERANCE` pixels) or with a
negative size, categories outside the label set, masks or panoptic maps of another size than the image. A COCO
folder's split is checked from its index (files, categories, boxes against the JSON's sizes) plus a few decoded
samples, so that COCO's 118k training images start training in seconds.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch
from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value, load_dataset, load_from_disk
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from ...modeling.image_decoding import decode_image
from ...modeling.shortest_edge_resize import resize_image, resize_label_map, shortest_edge_size
from ..base import DataReport as BaseDataReport
from ..semantic.data import BAD_SAMPLE_POLICIES, DataError, MissingSplitError, select_splits

logger = logging.getLogger(__name__)

Kind = Literal["instances", "panoptic"]
KINDS: tuple[str, ...] = ("instances", "panoptic")
# A COCO box may overhang the image by rounding of its polygon; more than this is an annotation error.
BOX_TOLERANCE = 1.0
SPOT_CHECK_SAMPLES = 8
INDEX_PROBLEM = "index_problem"
_SPLIT_SPELLINGS = {"train": ("train", "train2017", "training"), "validation": ("val", "val2017", "validation")}
_OBJECT_FEATURES = {
    "bbox": Sequence(Sequence(Value("float32"), length=4)),
    "category": Sequence(Value("int64")),
    "area": Sequence(Value("float32")),
    "id": Sequence(Value("int64")),
    "iscrowd": Sequence(Value("int64")),
    "segmentation": Sequence(Value("string")),
}


# ---------------------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DetectionLabelSpec:
    """The label set of a detection sample: classes `0 .. num_thing_labels - 1` are things (boxes, masks), the rest
    `num_thing_labels .. num_labels - 1` stuff (panoptic only). `masks`: samples carry instance masks;
    `panoptic`: they carry the panoptic map and the semantic target in the semantic head's channel space
    (0 = any thing, `1 + j` = stuff class `num_thing_labels + j`, `ignore_index` = void)."""

    num_labels: int
    num_thing_labels: int | None = None
    ignore_index: int = 255
    masks: bool = False
    panoptic: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) or self.num_labels < 1:
            raise ValueError(f"num_labels must be a positive int, got {self.num_labels!r}")
        if self.num_thing_labels is None:
            self.num_thing_labels = self.num_labels
        if not 1 <= self.num_thing_labels <= self.num_labels:
            raise ValueError(
                f"num_thing_labels must lie in [1, num_labels={self.num_labels}], got {self.num_thing_labels}"
            )
        if self.num_thing_labels < self.num_labels and not self.panoptic:
            raise ValueError(
                f"{self.num_labels - self.num_thing_labels} stuff classes (num_thing_labels={self.num_thing_labels} of "
                f"num_labels={self.num_labels}) only make sense for panoptic data"
            )
        if not 0 <= self.ignore_index < 2**31 or self.ignore_index <= self.num_labels - self.num_thing_labels:
            raise ValueError(
                f"ignore_index={self.ignore_index} must be a non-negative int above the semantic channels "
                f"0..{self.num_labels - self.num_thing_labels}"
            )
        if self.panoptic:
            self.masks = True

    @property
    def num_stuff_labels(self) -> int:
        return self.num_labels - int(self.num_thing_labels)


def label_spec(
    num_labels: int,
    ignore_index: int = 255,
    label_mapping: Any = None,
    reduce_labels: bool = False,
    *,
    num_thing_labels: int | None = None,
    masks: bool = False,
    panoptic: bool = False,
) -> DetectionLabelSpec:
    """`Task.label_spec` of the detection tasks. A raw-id mapping or label reduction (semantic maps' settings) do
    not apply: COCO's category ids are mapped by the loader."""
    if label_mapping or reduce_labels:
        raise ValueError(
            f"label_mapping={label_mapping!r} / reduce_labels={reduce_labels!r} apply to semantic label maps; "
            "detection data maps COCO category ids itself"
        )
    return DetectionLabelSpec(num_labels, num_thing_labels, ignore_index, masks=masks, panoptic=panoptic)


@dataclass(frozen=True)
class LabelSettings:
    """What a data set brings (`label_settings`): `labels` (comma-separated names, things first) or None,
    `num_thing_labels`, and the semantic settings that do not apply (None, False)."""

    labels: str | None
    num_thing_labels: int | None = None
    label_mapping: None = None
    reduce_labels: bool = False


def label_settings(
    dataset: str,
    labels: str | None,
    label_mapping: Any = None,
    reduce_labels: bool = False,
    *,
    kind: Kind = "instances",
) -> LabelSettings:
    """The label names of the demo set or a COCO folder (`coco_label_names`) where `labels` is None; `ValueError`
    when `labels` names another number of classes than the data set has, or semantic settings are given."""
    label_spec(1, label_mapping=label_mapping, reduce_labels=reduce_labels)  # refuses the semantic settings
    names: list[str] | None = None
    num_things = None
    if dataset == "demo":
        from .demo_data import DEMO_LABELS, DEMO_THING_LABELS

        names = list(DEMO_LABELS if kind == "panoptic" else DEMO_THING_LABELS)
        num_things = len(DEMO_THING_LABELS)
    elif (folder := find_coco_folder(dataset, kind)) is not None:
        names, num_things = coco_label_names(folder.annotation_file(folder.splits()[0]), kind)
    if names is None or labels is None:
        return LabelSettings(labels if names is None else ",".join(names), num_things)
    given = [name.strip() for name in labels.split(",") if name.strip()] if "," in labels else None
    if given is not None and len(given) != len(names):
        raise ValueError(f"labels names {len(given)} classes but {dataset} has {len(names)}: {names}")
    return LabelSettings(labels, num_things)


def coco_label_names(annotation_file: str | os.PathLike, kind: Kind = "instances") -> tuple[list[str], int]:
    """Class names of a COCO annotation file in contiguous-id order, and the number of things: categories sorted
    by id; for panoptic files things (`isthing` 1) first, then stuff."""
    categories = _read_json(Path(annotation_file)).get("categories") or []
    order = _category_order(categories, kind, Path(annotation_file))
    by_id = {c["id"]: c for c in categories}
    things = sum(1 for c in categories if kind != "panoptic" or c.get("isthing", 1) == 1)
    return [str(by_id[i]["name"]) for i in order], things


def _category_order(categories: list[dict], kind: Kind, path: Path) -> list[int]:
    if not categories:
        raise DataError(f"{path} has no categories")
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: category ids repeat: {sorted(ids)}")
    if kind == "panoptic":
        return sorted(ids, key=lambda i: (0 if next(c for c in categories if c["id"] == i).get("isthing", 1) else 1, i))
    return sorted(ids)


# ---------------------------------------------------------------------------------------------------------------------
# COCO folders
# ---------------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        with path.open() as file:
            return json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read the annotation file {path}: {error}") from error


@dataclass(frozen=True)
class CocoFolder:
    """A COCO folder as downloaded: `root/annotations/{instances,panoptic}_<split>.json`, images in `root/<split>/`,
    panoptic PNGs in `root/annotations/panoptic_<split>/` or `root/panoptic_<split>/`."""

    root: Path
    kind: Kind

    def annotation_file(self, split: str) -> Path:
        return self.root / "annotations" / f"{self.kind}_{split}.json"

    def splits(self) -> list[str]:
        prefix = f"{self.kind}_"
        return sorted(p.stem[len(prefix) :] for p in (self.root / "annotations").glob(f"{prefix}*.json"))

    def split_name(self, split: str) -> str:
        """`split` as this folder spells it (`"validation"` -> `"val2017"` when that is what it has)."""
        available = self.splits()
        if split in available:
            return split
        for spellings in _SPLIT_SPELLINGS.values():
            if split in spellings:
                return next((s for s in spellings if s in available), split)
        return split

    def png_folder(self, split: str) -> Path:
        inside = self.root / "annotations" / f"panoptic_{split}"
        return inside if inside.is_dir() else self.root / f"panoptic_{split}"

    def describe(self) -> str:
        return f"the COCO {self.kind} folder {self.root} (splits {self.splits()})"


def find_coco_folder(name: str | os.PathLike, kind: Kind = "instances") -> CocoFolder | None:
    """The COCO folder of `kind` at `name`, or None when `name` is none (no `annotations/<kind>_*.json`)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = Path(name)
    if not (path / "annotations").is_dir():
        return None
    folder = CocoFolder(path, kind)
    return folder if folder.splits() else None


def _box_problem(bbox: Any, width: int | None, height: int | None) -> str | None:
    """What is wrong with a COCO `[x, y, w, h]` box in an image of `(width, height)` (None: unknown size), or None."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return f"box {bbox!r} is not [x, y, w, h]"
    if not all(np.isfinite((x, y, w, h))):
        return f"box {[x, y, w, h]} is not finite"
    if w < 0 or h < 0:
        return f"box [x, y, w, h] = {[x, y, w, h]} has a negative size"
    if width is not None and height is not None:
        tol = BOX_TOLERANCE
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            return f"box [x, y, w, h] = {[x, y, w, h]} lies outside the {width}x{height} (WxH) image"
    return None


def _index_instances(folder: CocoFolder, split: str) -> Dataset:
    path = folder.annotation_file(split)
    data = _read_json(path)
    order = _category_order(data.get("categories") or [], "instances", path)
    contiguous = {cid: i for i, cid in enumerate(order)}
    per_image: dict[int, list[dict]] = defaultdict(list)
    for annotation in data.get("annotations", []):
        per_image[annotation["image_id"]].append(annotation)
    rows: dict[str, list] = {key: [] for key in ("image", "image_id", "width", "height", "objects", INDEX_PROBLEM)}
    for image in data.get("images", []):
        file = folder.root / split / image["file_name"]
        problems = [] if file.is_file() else [f"image file not found: {file}"]
        objects: dict[str, list] = {key: [] for key in _OBJECT_FEATURES}
        for annotation in per_image.get(image["id"], []):
            category = contiguous.get(annotation.get("category_id"), -1)
            if category < 0:
                problems.append(
                    f"annotation {annotation.get('id')}: unknown category_id {annotation.get('category_id')}"
                )
            box_problem = _box_problem(annotation.get("bbox"), image.get("width"), image.get("height"))
            if box_problem:
                problems.append(f"annotation {annotation.get('id')}: {box_problem}")
                continue
            objects["bbox"].append([float(v) for v in annotation["bbox"]])
            objects["category"].append(category)
            objects["area"].append(float(annotation.get("area", 0.0)))
            objects["id"].append(int(annotation.get("id", -1)))
            objects["iscrowd"].append(int(annotation.get("iscrowd", 0)))
            segmentation = annotation.get("segmentation")
            objects["segmentation"].append(json.dumps(segmentation) if segmentation else "")
        rows["image"].append({"path": str(file), "bytes": None})
        rows["image_id"].append(int(image["id"]))
        rows["width"].append(int(image.get("width", 0)))
        rows["height"].append(int(image.get("height", 0)))
        rows["objects"].append(objects)
        rows[INDEX_PROBLEM].append(f"{file}: " + "; ".join(problems) if problems else "")
    features = Features(
        {
            "image": Image(decode=False),
            "image_id": Value("int64"),
            "width": Value("int64"),
            "height": Value("int64"),
            "objects": _OBJECT_FEATURES,
            INDEX_PROBLEM: Value("string"),
        }
    )
    return Dataset.from_dict(rows, features=features)


def _index_panoptic(folder: CocoFolder, split: str) -> Dataset:
    path = folder.annotation_file(split)
    data = _read_json(path)
    categories = data.get("categories") or []
    order = _category_order(categories, "panoptic", path)
    contiguous = {cid: i for i, cid in enumerate(order)}
    things = {c["id"] for c in categories if c.get("isthing", 1) == 1}
    annotations = {a["image_id"]: a for a in data.get("annotations", [])}
    png_folder = folder.png_folder(split)
    keys = ("image", "image_id", "width", "height", "objects", "panoptic", "segments_info", INDEX_PROBLEM)
    rows: dict[str, list] = {key: [] for key in keys}
    for image in data.get("images", []):
        file = folder.root / split / image["file_name"]
        problems = [] if file.is_file() else [f"image file not found: {file}"]
        annotation = annotations.get(image["id"])
        if annotation is None:
            problems.append(f"image id {image['id']} has no panoptic annotation")
            annotation = {"file_name": Path(image["file_name"]).with_suffix(".png").name, "segments_info": []}
        png = png_folder / annotation["file_name"]
        if not png.is_file():
            problems.append(f"panoptic PNG not found: {png}")
        objects: dict[str, list] = {key: [] for key in _OBJECT_FEATURES}
        segments = []
        for segment in annotation.get("segments_info", []):
            category = contiguous.get(segment.get("category_id"), -1)
            if category < 0:
                problems.append(f"segment {segment.get('id')}: unknown category_id {segment.get('category_id')}")
                continue
            segments.append({**segment, "category_id": category})
            if segment["category_id"] in things:
                box_problem = _box_problem(segment.get("bbox"), image.get("width"), image.get("height"))
                if box_problem:
                    problems.append(f"segment {segment.get('id')}: {box_problem}")
                    continue
                objects["bbox"].append([float(v) for v in segment["bbox"]])
                objects["category"].append(category)
                objects["area"].append(float(segment.get("area", 0.0)))
                objects["id"].append(int(segment["id"]))
                objects["iscrowd"].append(int(segment.get("iscrowd", 0)))
                objects["segmentation"].append("")  # the mask is the PNG's pixels of this segment id
        rows["image"].append({"path": str(file), "bytes": None})
        rows["image_id"].append(int(image["id"]))
        rows["width"].append(int(image.get("width", 0)))
        rows["height"].append(int(image.get("height", 0)))
        rows["objects"].append(objects)
        rows["panoptic"].append({"path": str(png), "bytes": None})
        rows["segments_info"].append(json.dumps(segments))
        rows[INDEX_PROBLEM].append(f"{file}: " + "; ".join(problems) if problems else "")
    features = Features(
        {
            "image": Image(decode=False),
            "image_id": Value("int64"),
            "width": Value("int64"),
            "height": Value("int64"),
            "objects": _OBJECT_FEATURES,
            "panoptic": Image(decode=False),
            "segments_info": Value("string"),
            INDEX_PROBLEM: Value("string"),
        }
    )
    return Dataset.from_dict(rows, features=features)


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def load_detection_dataset(
    name: str = "demo",
    *,
    kind: Kind = "instances",
    config_name: str | None = None,
    revision: str | None = None,
    image_column: str = "image",
    label_column: str = "objects",
    train_split: str | None = "train",
    validation_split: str = "validation",
    validation_fraction: float | None = None,
    seed: int = 0,
    demo_options: dict[str, Any] | None = None,
    label_mapping: Any = None,
) -> DatasetDict:
    """A detection data set as a `DatasetDict` with `"train"` (unless `train_split` is None) and `"validation"`
    splits of canonical rows (module docstring).

    Args:
        name: `"demo"`, a COCO folder, a folder saved with `save_to_disk`, parquet files, or a Hub data set id.
        kind: `"instances"` (boxes, masks) or `"panoptic"` (also the panoptic map): which COCO annotation files
            are read; a `datasets` source must hold `panoptic` and `segments_info` columns for `"panoptic"`.
        image_column, label_column: a `datasets` source's column names, renamed to `image` and `objects`.
        train_split, validation_split: split names (a COCO folder also answers to `train`/`validation`/`val`).
        validation_fraction: hold that fraction of `train_split` out as validation (by `seed`) instead.
        demo_options: `num_train`, `num_validation`, `size` of `demo_data.make_demo_splits` (other keys, such as the
            semantic demo's `ignore_region`, do not apply and are ignored).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if label_mapping:
        raise ValueError(f"label_mapping={label_mapping!r} does not apply to detection data")
    if name == "demo":
        from .demo_data import make_demo_splits

        options = {k: v for k, v in (demo_options or {}).items() if k in ("num_train", "num_validation", "size")}
        splits = make_demo_splits(seed=seed, **options)
        return _cast(select_splits(splits, train_split, validation_split, validation_fraction, seed))
    folder = find_coco_folder(name, kind)
    if folder is not None:
        available = folder.splits()
        train = None if train_split is None else folder.split_name(train_split)
        validation = folder.split_name(validation_split)
        wanted = [train, validation if validation_fraction is None else None]
        for split in wanted:
            if split is not None and split not in available:
                raise MissingSplitError(
                    f"{folder.describe()} has no split {split!r} (no {folder.annotation_file(split)})", split, available
                )
        index = _index_panoptic if kind == "panoptic" else _index_instances
        splits = DatasetDict({split: index(folder, split) for split in dict.fromkeys(wanted) if split is not None})
        return select_splits(splits, train, validation, validation_fraction, seed)
    splits = _load_source(name, config_name, revision, train_split or "train")
    result = select_splits(splits, train_split, validation_split, validation_fraction, seed)
    return _standardise(result, image_column, label_column, kind)


def _load_source(name: str, config_name: str | None, revision: str | None, train_split: str) -> DatasetDict:
    path = Path(name)
    if path.is_file():
        raise ValueError(f"dataset {name!r} is a file; expected 'demo', a COCO folder, a saved dataset or a Hub id")
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = load_from_disk(str(path))
        return DatasetDict({train_split: loaded}) if isinstance(loaded, Dataset) else loaded
    if path.is_dir() and any(path.rglob("*.parquet")):
        return load_dataset(str(path), config_name)
    if path.is_dir():
        raise FileNotFoundError(
            f"{path} is neither a COCO folder (annotations/instances_<split>.json or panoptic_<split>.json), nor a "
            "dataset saved with save_to_disk, nor parquet files"
        )
    return load_dataset(name, config_name, revision=revision)


def _cast(result: DatasetDict) -> DatasetDict:
    """Image columns kept undecoded: `decode_sample` decodes and names the sample that fails."""
    for split, dataset in result.items():
        for column in ("image", "panoptic"):
            if column in dataset.column_names:
                dataset = dataset.cast_column(column, Image(decode=False))
        result[split] = dataset
    return result


def _standardise(result: DatasetDict, image_column: str, label_column: str, kind: Kind) -> DatasetDict:
    columns = next(iter(result.values())).column_names
    for column, role in ((image_column, "image_column"), (label_column, "label_column")):
        if column not in columns:
            raise ValueError(f"{role}={column!r} is not a column of the data set; its columns are {columns}")
    keep = [image_column, label_column] + [c for c in ("image_id", "panoptic", "segments_info") if c in columns]
    if kind == "panoptic" and not {"panoptic", "segments_info"} <= set(columns):
        raise ValueError(f"panoptic data needs the columns 'panoptic' and 'segments_info'; the data set has {columns}")
    for split, dataset in result.items():
        dataset = dataset.select_columns(keep)
        if image_column != "image":
            dataset = dataset.rename_column(image_column, "image")
        if label_column != "objects":
            dataset = dataset.rename_column(label_column, "objects")
        result[split] = dataset
    return _cast(result)


def dataset_label_names(dataset: Dataset) -> list[str] | None:
    """The class names a `datasets` source declares (`objects.category` as a `ClassLabel`), or None."""
    objects = dataset.features.get("objects")
    category = objects.get("category") if isinstance(objects, dict) else getattr(objects, "feature", {}).get("category")
    feature = getattr(category, "feature", category)
    return list(feature.names) if hasattr(feature, "names") else None


# ---------------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DetectionSample:
    """One decoded sample: `image` `(H, W, 3)` uint8; `boxes` `(N, 4)` float32 absolute xyxy (clipped to the
    image); `class_labels` `(N,)` int64 thing ids; `iscrowd` `(N,)` bool; `area` `(N,)` float32 (COCO's `area`,
    used by AP's size ranges); `masks` `(N, H, W)` bool or None; panoptic data: `segment_ids` `(H, W)` int64
    (0 = void) and `segments_info` `[{"id", "category_id", "iscrowd"}]`."""

    image: np.ndarray
    boxes: np.ndarray
    class_labels: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray
    masks: np.ndarray | None = None
    segment_ids: np.ndarray | None = None
    segments_info: list[dict] | None = None
    image_id: int = -1

    def semantic_labels(self, spec: DetectionLabelSpec) -> np.ndarray:
        """`(H, W)` int64 in the semantic head's channel space: 0 on thing pixels (crowd too, as detectron2),
        `1 + j` on stuff class `num_thing_labels + j`, `ignore_index` on void."""
        if self.segment_ids is None or self.segments_info is None:
            raise ValueError("semantic_labels needs panoptic data (segment_ids and segments_info)")
        table = {s["id"]: max(0, s["category_id"] - int(spec.num_thing_labels) + 1) for s in self.segments_info}
        ids, inverse = np.unique(self.segment_ids, return_inverse=True)
        values = np.array([table.get(int(i), spec.ignore_index) for i in ids], np.int64)
        return values[inverse].reshape(self.segment_ids.shape)


def _describe(record: Any) -> str:
    path = record.get("path") if isinstance(record, dict) else None
    return f"file {path}" if path else "in-memory file"


def _open(record: Any) -> Any:
    """A PIL image (or the array / image itself) from a `datasets.Image` record, a path or an image."""
    if isinstance(record, dict):
        if record.get("bytes") is not None:
            image = PIL.Image.open(io.BytesIO(record["bytes"]))
        elif record.get("path"):
            image = PIL.Image.open(record["path"])
        else:
            raise DataError("the record holds neither bytes nor a path")
        image.load()
        return image
    if record is None:
        raise DataError("missing file")
    return record


def _objects(value: Any) -> dict[str, list]:
    """`objects` as a dict of lists, from a dict of lists (datasets' `Sequence` of a dict) or a list of dicts."""
    if value is None:
        return {"bbox": [], "category": []}
    if isinstance(value, list):
        keys = {key for item in value for key in item}
        return {key: [item.get(key) for item in value] for key in keys}
    if isinstance(value, dict):
        return value
    raise DataError(f"objects must be a dict of lists or a list of dicts, got {type(value).__name__}")


def _mask_of(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, RLE with string or list counts, or their JSON text) as an `(H, W)` bool."""
    if isinstance(segmentation, str):
        segmentation = json.loads(segmentation)
    if isinstance(segmentation, dict):
        size = [int(s) for s in segmentation.get("size", ())]
        if size != [height, width]:
            raise DataError(f"an RLE mask of size {size} (HxW) belongs to a {height}x{width} image")
        rle = segmentation
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, height, width)
        elif isinstance(rle["counts"], str):
            rle = {"size": size, "counts": rle["counts"].encode("ascii")}
        return mask_utils.decode(rle).astype(bool)
    if isinstance(segmentation, list) and segmentation:
        polygons = [list(map(float, p)) for p in segmentation if len(p) >= 6]
        if not polygons:
            raise DataError(f"polygons need at least 3 points, got {segmentation!r}")
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)
    raise DataError(f"a segmentation must be polygons or an RLE, got {type(segmentation).__name__}")


def _panoptic_ids(record: Any) -> np.ndarray:
    """Segment ids `(H, W)` int64 of a COCO panoptic PNG (`r + 256 g + 256^2 b`)."""
    rgb = np.asarray(_open(record).convert("RGB"), np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def decode_sample(row: dict[str, Any], index: int, spec: DetectionLabelSpec) -> DetectionSample:
    """Decodes row `index` (canonical columns) into a `DetectionSample`; masks only when `spec.masks`, the panoptic
    map only when `spec.panoptic`. Raises `DataError` naming the sample, the file and the problem."""
    where = f"sample {index} ({_describe(row.get('image'))})"
    try:
        image = decode_image(_open(row.get("image")), name=_describe(row.get("image")))
    except (OSError, DataError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise DataError(f"{where}: cannot read the image: {error}") from error
    height, width = image.shape[:2]
    objects = _objects(row.get("objects"))
    boxes_xywh = objects.get("bbox") or []
    categories = objects.get("category", objects.get("category_id")) or []
    count = len(boxes_xywh)
    if len(categories) != count:
        raise DataError(f"{where}: {count} boxes but {len(categories)} categories")
    for k, bbox in enumerate(boxes_xywh):
        if (problem := _box_problem(bbox, width, height)) is not None:
            raise DataError(f"{where}: object {k}: {problem}")
    labels = np.asarray(categories, np.int64).reshape(count)
    bad = [int(c) for c in labels if not 0 <= c < int(spec.num_thing_labels)]
    if bad:
        raise DataError(f"{where}: categories {bad} are not thing classes 0..{int(spec.num_thing_labels) - 1}")
    xywh = np.asarray(boxes_xywh, np.float32).reshape(count, 4)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    boxes = np.clip(boxes, 0, np.array([width, height, width, height], np.float32))
    iscrowd = np.asarray(objects.get("iscrowd") or [0] * count, bool).reshape(count)
    area = np.asarray(objects.get("area") or (xywh[:, 2] * xywh[:, 3]).tolist(), np.float32).reshape(count)
    sample = DetectionSample(image, boxes, labels, iscrowd, area, image_id=int(row.get("image_id", index) or 0))
    if spec.panoptic:
        _decode_panoptic(row, sample, spec, where)
    if spec.masks:
        sample.masks = _decode_masks(row, objects, sample, where)
    return sample


def _decode_panoptic(row: dict[str, Any], sample: DetectionSample, spec: DetectionLabelSpec, where: str) -> None:
    record = row.get("panoptic")
    try:
        ids = _panoptic_ids(record)
    except (OSError, DataError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise DataError(f"{where}: cannot read the panoptic PNG ({_describe(record)}): {error}") from error
    if ids.shape != sample.image.shape[:2]:
        raise DataError(
            f"{where}: the panoptic PNG ({_describe(record)}) is {ids.shape[0]}x{ids.shape[1]} but the image is "
            f"{sample.image.shape[0]}x{sample.image.shape[1]} (HxW)"
        )
    info = row.get("segments_info")
    segments = json.loads(info) if isinstance(info, str) else list(info or [])
    for segment in segments:
        if not 0 <= int(segment["category_id"]) < spec.num_labels:
            raise DataError(f"{where}: segment {segment['id']} has category {segment['category_id']}, not a class")
    sample.segment_ids = ids
    sample.segments_info = [
        {"id": int(s["id"]), "category_id": int(s["category_id"]), "iscrowd": int(s.get("iscrowd", 0))}
        for s in segments
    ]


def _decode_masks(row: dict[str, Any], objects: dict[str, list], sample: DetectionSample, where: str) -> np.ndarray:
    height, width = sample.image.shape[:2]
    count = len(sample.class_labels)
    if sample.segment_ids is not None:
        ids = objects.get("id") or []
        return np.stack([sample.segment_ids == int(i) for i in ids]) if count else np.zeros((0, height, width), bool)
    segmentations = objects.get("segmentation")
    per_object_masks = objects.get("mask")
    masks = []
    for k in range(count):
        try:
            if per_object_masks is not None and per_object_masks[k] is not None:
                mask = np.asarray(_open(per_object_masks[k])) > 0
                if mask.ndim == 3:
                    mask = mask.any(-1)
                if mask.shape != (height, width):
                    raise DataError(f"a {mask.shape[0]}x{mask.shape[1]} mask belongs to a {height}x{width} image")
            elif segmentations is not None and segmentations[k] not in (None, "", []):
                mask = _mask_of(segmentations[k], height, width)
            else:
                raise DataError("no segmentation or mask")
        except (DataError, ValueError, KeyError, TypeError, OSError) as error:
            raise DataError(f"{where}: object {k}: {error}") from error
        masks.append(mask)
    return np.stack(masks) if masks else np.zeros((0, height, width), bool)


# ---------------------------------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DataReport(BaseDataReport):
    """What `check_samples` found in one split (`fapn_hf.tasks.base.DataReport`), and the decoded instances."""

    num_instances: int = 0

    def counts(self) -> dict[str, Any]:
        return {"num_instances": self.num_instances}


def _spread(indices: list[int], count: int) -> list[int]:
    if len(indices) <= count:
        return indices
    return [indices[round(i * (len(indices) - 1) / (count - 1))] for i in range(count)]


def check_samples(
    dataset: Dataset, spec: DetectionLabelSpec, policy: str = "fail", split: str = "train"
) -> tuple[Dataset, DataReport]:
    """Applies the bad-sample policy to one split: returns the dataset (without bad samples under `"skip"`) and a
    report; under `"fail"` a `DataError` lists every bad sample (index, file, reason). A COCO folder's split is
    checked from its index plus `SPOT_CHECK_SAMPLES` decoded samples; other splits are decoded whole. A split with
    no usable sample is an error under either policy."""
    if policy not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"bad-sample policy must be one of {BAD_SAMPLE_POLICIES}, got {policy!r}")
    report = DataReport(split, len(dataset))
    if INDEX_PROBLEM in dataset.column_names:
        problems = dataset[INDEX_PROBLEM]
        report.bad_samples = [(i, f"sample {i}: {p}") for i, p in enumerate(problems) if p]
        good = [i for i, p in enumerate(problems) if not p]
        indices = _spread(good, SPOT_CHECK_SAMPLES)
        report.decoded_samples = len(indices)
    else:
        indices = range(len(dataset))
    for index in indices:
        try:
            sample = decode_sample(dataset[index], index, spec)
        except DataError as error:
            report.bad_samples.append((index, str(error)))
            continue
        report.num_instances += len(sample.class_labels)
    report.bad_samples.sort()
    listed = "\n  ".join(reason for _, reason in report.bad_samples[:20])
    listed += f"\n  ... and {report.num_skipped - 20} more" if report.num_skipped > 20 else ""
    if report.bad_samples and policy == "fail":
        raise DataError(
            f"{report.num_skipped} of {len(dataset)} {split} samples cannot be used:\n  {listed}\n"
            "Fix them, or pass bad_sample_policy='skip' to leave them out."
        )
    if report.num_skipped == len(dataset):
        raise DataError(f"the {split} split has no usable sample ({len(dataset)} samples):\n  {listed}")
    if report.bad_samples:
        logger.warning("%s: skipping %d of %d samples: %s", split, report.num_skipped, len(dataset), report.bad_samples)
        bad = {index for index, _ in report.bad_samples}
        dataset = dataset.select([i for i in range(len(dataset)) if i not in bad])
    return dataset, report


# ---------------------------------------------------------------------------------------------------------------------
# The dataset the Trainer sees
# ---------------------------------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MinimalDetectionProcessor:
    """A stand-in for `FaPNRCNNImageProcessor` where none is given: detectron2's shortest-edge resize (`do_resize`)
    then ImageNet normalisation of RGB in [0, 1]. `processor(images=(H, W, 3) array or (3, H, W) uint8 tensor,
    do_resize=...) -> {"pixel_values": (1, 3, h, w), "image_sizes": (1, 2)}`."""

    def __init__(self, shortest_edge: int = 800, max_size: int = 1333) -> None:
        self.shortest_edge, self.max_size = shortest_edge, max_size

    def __call__(self, images: Any, do_resize: bool = True, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        image = torch.as_tensor(np.asarray(images)).permute(2, 0, 1) if not isinstance(images, torch.Tensor) else images
        if do_resize:
            image = resize_image(image, shortest_edge_size(*image.shape[-2:], self.shortest_edge, self.max_size))
        mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
        pixel_values = (image.float() / 255.0 - mean) / std
        return {"pixel_values": pixel_values[None], "image_sizes": torch.tensor([pixel_values.shape[-2:]])}


class DetectionDataset(torch.utils.data.Dataset):
    """Samples for the Trainer: `{"pixel_values": (3, h, w) float, "labels": {...}, "target": {...}}`.

    `labels` follows the detector's contract in `pixel_values` pixels: `boxes` `(N, 4)` float xyxy, `class_labels`
    `(N,)` long, `iscrowd` `(N,)` bool, `masks` `(N, h, w)` uint8 (when `spec.masks`), `semantic_labels` `(h, w)`
    long (when `spec.panoptic`). With a `transform` (training augmentation) it sets the geometry and the processor
    only normalises (`do_resize=False`); without one the processor resizes and the labels follow its size (boxes
    scaled, masks by nearest neighbour). Instances left empty by the geometry are dropped (detectron2's
    `filter_empty_instances`). `target` holds what metrics score, at the original resolution: `image_id`,
    `size` `(H, W)`, `boxes`, `class_labels`, `iscrowd`, `area`, `masks` `(N, H, W)` bool, and for panoptic data
    `segment_ids` `(H, W)` and `segments_info`; only with `keep_targets` (default: when not random).

    Args:
        dataset: canonical rows (`load_detection_dataset`).
        spec: the label set and what samples carry.
        transform: `transform(image, target, seed) -> (image, target)` on a `tv_tensors.Image` and a dict of
            `boxes` (`tv_tensors.BoundingBoxes`), `class_labels`, `iscrowd`, `masks` / `semantic_labels`
            (`tv_tensors.Mask`), e.g. `transforms.TrainAugmentation`; called without `seed` when `random=False`.
        image_processor: the model's processor (`FaPNRCNNImageProcessor`), or None for `MinimalDetectionProcessor`.
    """

    def __init__(
        self,
        dataset: Dataset,
        spec: DetectionLabelSpec,
        transform: Callable[..., Any] | None,
        image_processor: Any,
        random: bool = True,
        seed: int = 0,
        keep_targets: bool | None = None,
    ) -> None:
        self.dataset, self.spec, self.transform = dataset, spec, transform
        self.processor = image_processor if image_processor is not None else MinimalDetectionProcessor()
        self.random, self.seed, self.epoch = random, seed, 0
        self.keep_targets = (not random) if keep_targets is None else keep_targets

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> DetectionSample:
        """The decoded, untransformed sample."""
        return decode_sample(self.dataset[index], index, self.spec)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.load(index)
        height, width = sample.image.shape[:2]
        image = torch.from_numpy(sample.image).permute(2, 0, 1)
        labels: dict[str, torch.Tensor] = {
            "boxes": torch.from_numpy(sample.boxes),
            "class_labels": torch.from_numpy(sample.class_labels),
            "iscrowd": torch.from_numpy(sample.iscrowd),
        }
        if self.spec.masks:
            labels["masks"] = torch.from_numpy(sample.masks.astype(np.uint8))
        if self.spec.panoptic:
            labels["semantic_labels"] = torch.from_numpy(sample.semantic_labels(self.spec))
        if self.transform is not None:
            image, labels = self._transform(image, labels, index)
        processed = self.processor(
            images=image, return_tensors="pt", **({"do_resize": False} if self.transform else {})
        )
        pixel_values = processed["pixel_values"][0]
        sizes = processed.get("image_sizes") if hasattr(processed, "get") else None
        new_size = tuple(int(s) for s in sizes[0]) if sizes is not None else tuple(pixel_values.shape[-2:])
        if self.transform is None and new_size != (height, width):
            labels = _resize_labels(labels, (height, width), new_size)
        labels = _drop_empty(labels)
        item: dict[str, Any] = {"pixel_values": pixel_values, "labels": labels}
        if self.keep_targets:
            item["target"] = _target(sample)
        return item

    def _transform(self, image: torch.Tensor, labels: dict[str, torch.Tensor], index: int) -> tuple[torch.Tensor, dict]:
        size = tuple(image.shape[-2:])
        target: dict[str, Any] = {
            **labels,
            "boxes": tv_tensors.BoundingBoxes(labels["boxes"], format="XYXY", canvas_size=size),
        }
        for key in ("masks", "semantic_labels"):
            if key in target:
                target[key] = tv_tensors.Mask(target[key])
        image = tv_tensors.Image(image)
        if self.random:
            image, target = self.transform(image, target, (self.seed, self.epoch, index))
        else:
            image, target = self.transform(image, target)
        return image.as_subclass(torch.Tensor), {k: v.as_subclass(torch.Tensor) for k, v in target.items()}


def _resize_labels(labels: dict[str, torch.Tensor], old: tuple[int, int], new: tuple[int, int]) -> dict:
    (h, w), (nh, nw) = old, new
    out = dict(labels)
    out["boxes"] = labels["boxes"] * torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=labels["boxes"].dtype)
    for key in ("masks", "semantic_labels"):
        if key in labels:
            # int64 in and back: the shared resize compares with int32 bounds, which narrower dtypes overflow.
            values = labels[key]
            resized = resize_label_map(values.long(), new) if values.numel() else None
            out[key] = values.new_zeros((*values.shape[:-2], nh, nw)) if resized is None else resized.to(values.dtype)
    return out


def _drop_empty(labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Instances whose box has no area, or whose mask no pixel, left out (detectron2's `filter_empty_instances`)."""
    boxes = labels["boxes"]
    keep = ((boxes[:, 2] - boxes[:, 0]) > 1e-5) & ((boxes[:, 3] - boxes[:, 1]) > 1e-5)
    if "masks" in labels and len(labels["masks"]):
        keep &= labels["masks"].flatten(1).bool().any(1)
    if bool(keep.all()):
        return {**labels, "boxes": boxes.float(), "class_labels": labels["class_labels"].long()}
    out = {k: (v[keep] if k in ("boxes", "class_labels", "iscrowd", "masks") else v) for k, v in labels.items()}
    return {**out, "boxes": out["boxes"].float(), "class_labels": out["class_labels"].long()}


def _target(sample: DetectionSample) -> dict[str, Any]:
    height, width = sample.image.shape[:2]
    target: dict[str, Any] = {
        "image_id": sample.image_id,
        "size": (height, width),
        "boxes": torch.from_numpy(sample.boxes),
        "class_labels": torch.from_numpy(sample.class_labels),
        "iscrowd": torch.from_numpy(sample.iscrowd),
        "area": torch.from_numpy(sample.area),
    }
    if sample.masks is not None:
        target["masks"] = torch.from_numpy(sample.masks)
    if sample.segment_ids is not None:
        target["segment_ids"] = torch.from_numpy(sample.segment_ids)
        target["segments_info"] = sample.segments_info
    return target


# Batch keys the model does not take: the evaluation loop hands them to the metrics, never to `forward`.
TARGET_KEYS = ("targets",)


@dataclass
class DetectionCollator:
    """Batches samples: `pixel_values` `(B, 3, H, W)` zero padded bottom/right to the largest, `image_sizes`
    `(B, 2)` long (each image's un-padded `(h, w)`), `labels` (the list of per-image dicts) and, when the samples
    carry them, `targets` (the list of original-resolution targets for the metrics: `TARGET_KEYS`)."""

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("DetectionCollator needs at least one sample")
        image_sizes = torch.tensor([tuple(s["pixel_values"].shape[-2:]) for s in samples], dtype=torch.long)
        height, width = image_sizes.max(dim=0).values.tolist()
        pixel_values = torch.zeros(len(samples), 3, height, width, dtype=samples[0]["pixel_values"].dtype)
        for i, sample in enumerate(samples):
            h, w = sample["pixel_values"].shape[-2:]
            pixel_values[i, :, :h, :w] = sample["pixel_values"]
        batch: dict[str, Any] = {
            "pixel_values": pixel_values,
            "image_sizes": image_sizes,
            "labels": [s["labels"] for s in samples],
        }
        if all("target" in s for s in samples):
            batch["targets"] = [s["target"] for s in samples]
        return batch


def eval_collator(ignore_index: int = 255) -> DetectionCollator:
    """`Task.eval_collator`: a `DetectionCollator` (labels are per-image dicts; `ignore_index` applies to the
    panoptic semantic labels, already set by the dataset)."""
    return DetectionCollator()


__all__ = [
    "BOX_TOLERANCE",
    "KINDS",
    "TARGET_KEYS",
    "CocoFolder",
    "DataError",
    "DataReport",
    "DetectionCollator",
    "DetectionDataset",
    "DetectionLabelSpec",
    "DetectionSample",
    "LabelSettings",
    "MinimalDetectionProcessor",
    "check_samples",
    "coco_label_names",
    "dataset_label_names",
    "decode_sample",
    "eval_collator",
    "find_coco_folder",
    "label_settings",
    "label_spec",
    "load_detection_dataset",
]
