"""Segmentation data sets as they are downloaded: recognised by their files, paired by their own naming rules.

`--dataset PATH` (and `load_segmentation_dataset(PATH)`) reads these folders as they come, no conversion:

- Cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` with `gtFine/<split>/<city>/*_gtFine_labelIds.png`
  (raw ids, mapped 34 -> 19) or, after the official `createTrainIdLabelImgs`, `*_gtFine_labelTrainIds.png` (train
  ids, taken as they are); splits `train`, `val` (`test` has no public labels and is refused); 19 classes.
- ADE20K: `ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*.{jpg,png}`; 150 classes, label 0
  ("other") ignored (`reduce_labels`).
- COCO-Stuff-10K: `images/*.jpg`, `annotations/*.mat` (label matrix `S`), `imageLists/{train,test}.txt`; and
  COCO-Stuff-164K: `images/{train,val}2017/*.jpg` with `stuffthingmaps_trainval2017/{train,val}2017/*.png`; both
  mapped to the 171 contiguous classes of the MaskFormer recipes.
- Pascal VOC 2012: `JPEGImages/*.jpg`, `SegmentationClass/*.png` (palette PNGs, read as indices; 255 ignored),
  `ImageSets/Segmentation/{train,val}.txt`; 21 classes. With SBD (`cls/*.mat`, `train.txt`, `val.txt`) beside it,
  the split `trainaug`: VOC's train and SBD's train + val less VOC's val (10,582 images), VOC's own label where an
  image has one, SBD's otherwise.

Split names are the data set's own, and the usual other spellings are aliases (`train`/`training`,
`val`/`validation`; COCO-Stuff-10K's `test` is its validation split, as in every paper that reports it). The label
set, the raw-id mapping and the label reduction come with the layout (`label_settings`): a Cityscapes folder gives
the 19 Cityscapes classes without `labels` or `label_mapping`, and an argument that contradicts the layout is an
error naming both.

Indexing is lazy: a split becomes a `datasets.Dataset` of file paths (`"image"`, `"label"`: undecoded
`datasets.Image` records `{"path": ..., "bytes": None}`) plus `"index_problem"`, what is wrong with the pair (a
missing label, a label without its image, a label of another size, an unreadable header) or None. Nothing is
decoded and nothing is copied: building the index reads the file names and the files' headers (sizes), once; the
index is cached as JSON in the datasets cache (`index_cache_dir`), keyed by the folder, the split and the kind of
label file, and rebuilt when any file of the split is added, removed, resized or touched (their names, sizes and
modification times, read with `os.scandir`, are its fingerprint).

`read_mat_label` reads the `.mat` labels of COCO-Stuff-10K (`S`: the COCO category id, 1..182, 0 unlabelled;
returned in the stuffthingmaps convention, category id - 1, 255 unlabelled) and SBD (`GTcls.Segmentation`, VOC
class ids).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
import PIL.Image

from ...labels import LABEL_SETS

logger = logging.getLogger(__name__)

# Bumped when the index format or its problems change: older cache files are then rebuilt.
INDEX_VERSION = 1
# The column that holds what indexing found wrong with a sample (None: nothing). `check_samples` reads it.
INDEX_PROBLEM = "index_problem"
INDEX_CACHE_ENV = "FAPN_HF_INDEX_CACHE"
_EXIF_ORIENTATION = 0x0112
_HEADER_THREADS = 8


def index_cache_dir() -> Path:
    """Where folder indexes are cached: `$FAPN_HF_INDEX_CACHE`, else `fapn_hf_folder_index` in the datasets cache
    (`$HF_DATASETS_CACHE`, by default `~/.cache/huggingface/datasets`)."""
    if os.environ.get(INDEX_CACHE_ENV):
        return Path(os.environ[INDEX_CACHE_ENV]).expanduser()
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "fapn_hf_folder_index"


# ---------------------------------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelVariant:
    """One kind of label file a layout may hold and how its values become class ids.

    Args:
        name: the files' name, e.g. `"labelTrainIds"` (part of the index's cache key).
        label_mapping: the `LABEL_MAPPINGS` name their raw values need, None when they are class ids.
        description: the files as a user sees them, for messages.
    """

    name: str
    label_mapping: str | None
    description: str


@dataclass(frozen=True)
class Entry:
    """One sample of a split: the image and label paths (either may be missing) and what is wrong, if anything."""

    image: str
    label: str
    problem: str | None = None


Files = dict[str, tuple[int, int]]  # absolute path -> (size in bytes, modification time in ns)


def _scan(folder: Path, suffix: str, recursive: bool = False) -> Files:
    """The files under `folder` whose names end with `suffix`, with their sizes and modification times."""
    found: Files = {}
    pending = [folder]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir():
                if recursive:
                    pending.append(Path(entry.path))
            elif entry.name.endswith(suffix):
                stat = entry.stat()
                found[entry.path] = (stat.st_size, stat.st_mtime_ns)
    return found


def _scan_files(*paths: Path) -> Files:
    """Sizes and modification times of single files (list files), those that exist."""
    found: Files = {}
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def _has_file(folder: Path, suffix: str) -> bool:
    """Whether any file below `folder` ends with `suffix` (stops at the first)."""
    for _, _, names in os.walk(folder):
        if any(name.endswith(suffix) for name in names):
            return True
    return False


def _read_list(path: Path) -> list[str]:
    """The names of an image list file (one per line; a VOC list may add a second column), blank lines skipped."""
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


class Layout:
    """How one data set is laid out on disk: how it is recognised, its splits and their aliases, how an image's label
    is found, and the label set, mapping and reduction its labels imply.

    Subclasses set the class attributes and implement `find_root`, `splits`, `variants`, `scan` and `pair`."""

    name: ClassVar[str]
    title: ClassVar[str]
    files: ClassVar[str]  # what the folder holds, for messages
    labels: ClassVar[str]  # a LABEL_SETS name
    reduce_labels: ClassVar[bool] = False
    aliases: ClassVar[dict[str, str]] = {}
    unlabelled: ClassVar[dict[str, str]] = {}  # split -> why it cannot be trained on or scored

    def find_root(self, path: Path) -> Path | None:
        """The data set's root if `path` is it (or holds it, e.g. `VOCdevkit/VOC2012`), by its files."""
        raise NotImplementedError

    def splits(self, root: Path) -> list[str]:
        """The splits the folder has, by its files."""
        raise NotImplementedError

    def variants(self, root: Path) -> list[LabelVariant]:
        """The kinds of label file the folder holds, preferred first (at least one)."""
        raise NotImplementedError

    def scan(self, root: Path, split: str, variant: LabelVariant) -> Files:
        """Every file the split's index depends on (its fingerprint), with sizes and modification times."""
        raise NotImplementedError

    def pair(self, root: Path, split: str, variant: LabelVariant, files: Files) -> list[Entry]:
        """The split's samples, paired by name from `files` alone (no reading): an image without its label and a
        label without its image become entries with a problem, naming the file expected."""
        raise NotImplementedError

    def missing_split_hint(self, root: Path, split: str) -> str:
        """What to do about a split the folder lacks ("" when nothing specific)."""
        return ""


def _pair_by_stem(
    images: Files,
    labels: Files,
    label_for: Callable[[str], str],
    image_for: Callable[[str], str],
    misplaced: Callable[[str], str] = lambda path: "",
) -> list[Entry]:
    """Pairs every image with the label `label_for(image)` names; labels that no image claims are listed after the
    images, each with the image `image_for(label)` it would belong to. Sorted by path, so the order is stable."""
    entries, claimed = [], set()
    for image in sorted(images):
        label = label_for(image)
        if label in labels:
            claimed.add(label)
            entries.append(Entry(image, label))
        else:
            entries.append(Entry(image, label, f"image {image} has no label: expected {label}{misplaced(image)}"))
    for label in sorted(set(labels) - claimed):
        image = image_for(label)
        entries.append(Entry(image, label, f"label {label} has no image: expected {image}{misplaced(label)}"))
    return entries


class CityscapesLayout(Layout):
    name = "cityscapes"
    title = "Cityscapes"
    files = "leftImg8bit/<split>/<city>/*_leftImg8bit.png with gtFine/<split>/<city>/*_gtFine_labelIds.png"
    labels = "cityscapes"
    aliases = {"training": "train", "validation": "val"}
    unlabelled = {
        "test": "Cityscapes' test labels are not public (the gtFine/test files are placeholders): score on 'val', or "
        "submit test predictions to the Cityscapes benchmark server",
    }
    _VARIANTS = (
        LabelVariant(
            "labelTrainIds", None, "*_gtFine_labelTrainIds.png (train ids from createTrainIdLabelImgs, as they are)"
        ),
        LabelVariant("labelIds", "cityscapes", "*_gtFine_labelIds.png (raw ids, mapped 34 -> 19)"),
    )

    def find_root(self, path: Path) -> Path | None:
        for root in (path, path / "cityscapes"):
            if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
                return root
        return None

    def splits(self, root: Path) -> list[str]:
        return sorted(entry.name for entry in os.scandir(root / "leftImg8bit") if entry.is_dir())

    def variants(self, root: Path) -> list[LabelVariant]:
        # createTrainIdLabelImgs writes train-id files next to every labelIds file: where any exists, they are meant.
        labelled = [root / "gtFine" / split for split in self.splits(root) if split not in self.unlabelled]
        present = [v for v in self._VARIANTS if any(_has_file(folder, f"_{v.name}.png") for folder in labelled)]
        return present or [self._VARIANTS[1]]

    def scan(self, root: Path, split: str, variant: LabelVariant) -> Files:
        images = _scan(root / "leftImg8bit" / split, "_leftImg8bit.png", recursive=True)
        return images | _scan(root / "gtFine" / split, f"_gtFine_{variant.name}.png", recursive=True)

    def pair(self, root: Path, split: str, variant: LabelVariant, files: Files) -> list[Entry]:
        image_dir, label_dir = str(root / "leftImg8bit" / split), str(root / "gtFine" / split)
        label_suffix = f"_gtFine_{variant.name}.png"
        images = {path: stat for path, stat in files.items() if path.startswith(image_dir + os.sep)}
        labels = {path: stat for path, stat in files.items() if path.startswith(label_dir + os.sep)}

        def label_for(image: str) -> str:
            return label_dir + image[len(image_dir) : -len("_leftImg8bit.png")] + label_suffix

        def image_for(label: str) -> str:
            return image_dir + label[len(label_dir) : -len(label_suffix)] + "_leftImg8bit.png"

        def misplaced(path: str) -> str:
            # <city>/<city>_<sequence>_<frame>_...: a file named for another city is in the wrong folder.
            city, name = Path(path).parent.name, Path(path).name
            if not name.startswith(city + "_"):
                return f" (its name is of city {name.split('_')[0]!r}, its folder {city!r})"
            return ""

        return _pair_by_stem(images, labels, label_for, image_for, misplaced)


class ADE20KLayout(Layout):
    name = "ade20k"
    title = "ADE20K"
    files = "ADEChallengeData2016/images/<split>/*.jpg with annotations/<split>/*.png"
    labels = "ade20k"
    reduce_labels = True
    aliases = {"train": "training", "val": "validation"}
    _SPLITS = ("training", "validation")

    def find_root(self, path: Path) -> Path | None:
        for root in (path, path / "ADEChallengeData2016"):
            if (root / "annotations").is_dir() and any((root / "images" / split).is_dir() for split in self._SPLITS):
                return root
        return None

    def splits(self, root: Path) -> list[str]:
        return [split for split in self._SPLITS if (root / "images" / split).is_dir()]

    def variants(self, root: Path) -> list[LabelVariant]:
        return [LabelVariant("annotations", None, "annotations/<split>/*.png (0 'other' ignored, 1..150 the classes)")]

    def scan(self, root: Path, split: str, variant: LabelVariant) -> Files:
        return _scan(root / "images" / split, ".jpg") | _scan(root / "annotations" / split, ".png")

    def pair(self, root: Path, split: str, variant: LabelVariant, files: Files) -> list[Entry]:
        image_dir, label_dir = root / "images" / split, root / "annotations" / split
        images = {path: stat for path, stat in files.items() if path.endswith(".jpg")}
        labels = {path: stat for path, stat in files.items() if path.endswith(".png")}
        return _pair_by_stem(
            images,
            labels,
            lambda image: str(label_dir / (Path(image).stem + ".png")),
            lambda label: str(image_dir / (Path(label).stem + ".jpg")),
        )


class CocoStuff10KLayout(Layout):
    name = "cocostuff10k"
    title = "COCO-Stuff-10K"
    files = "images/*.jpg, annotations/*.mat and imageLists/<split>.txt"
    labels = "cocostuff"
    # 10K has no validation split: its 1,000 test images are what papers score on.
    aliases = {"training": "train", "validation": "test", "val": "test"}

    def find_root(self, path: Path) -> Path | None:
        for root in (path, path / "cocostuff-10k", path / "cocostuff10k"):
            if all((root / name).is_dir() for name in ("images", "annotations", "imageLists")):
                return root
        return None

    def splits(self, root: Path) -> list[str]:
        return sorted(path.stem for path in (root / "imageLists").glob("*.txt"))

    def variants(self, root: Path) -> list[LabelVariant]:
        return [LabelVariant("mat", "cocostuff", "annotations/*.mat (S: COCO category id, 0 unlabelled)")]

    def scan(self, root: Path, split: str, variant: LabelVariant) -> Files:
        lists = _scan_files(root / "imageLists" / f"{split}.txt")
        return lists | _scan(root / "images", ".jpg") | _scan(root / "annotations", ".mat")

    def pair(self, root: Path, split: str, variant: LabelVariant, files: Files) -> list[Entry]:
        return _pair_listed(
            _read_list(root / "imageLists" / f"{split}.txt"),
            files,
            lambda name: [str(root / "images" / f"{name}.jpg")],
            lambda name: [str(root / "annotations" / f"{name}.mat")],
        )


class CocoStuff164KLayout(Layout):
    name = "cocostuff164k"
    title = "COCO-Stuff-164K"
    files = "images/<split>2017/*.jpg with stuffthingmaps_trainval2017/<split>2017/*.png"
    labels = "cocostuff"
    aliases = {"train": "train2017", "training": "train2017", "val": "val2017", "validation": "val2017"}
    unlabelled = {"test2017": "COCO's test images have no public stuff labels: score on 'val2017'"}
    _SPLITS = ("train2017", "val2017", "test2017")
    _LABEL_FOLDERS = ("stuffthingmaps_trainval2017", "stuffthingmaps", "annotations")
    _IMAGE_FOLDERS = ("images", ".")

    def _folders(self, root: Path) -> tuple[Path, Path] | None:
        for images in self._IMAGE_FOLDERS:
            for labels in self._LABEL_FOLDERS:
                if any((root / labels / s).is_dir() and (root / images / s).is_dir() for s in self._SPLITS[:2]):
                    return root / images, root / labels
        return None

    def find_root(self, path: Path) -> Path | None:
        for root in (path, path / "coco", path / "cocostuff"):
            if self._folders(root) is not None:
                return root
        return None

    def splits(self, root: Path) -> list[str]:
        images, labels = self._folders(root)
        found = [s for s in self._SPLITS if (images / s).is_dir() and (labels / s).is_dir()]
        return found + [s for s in self.unlabelled if (images / s).is_dir() and s not in found]

    def variants(self, root: Path) -> list[LabelVariant]:
        labels = self._folders(root)[1].name
        return [LabelVariant("stuffthingmaps", "cocostuff", f"{labels}/<split>/*.png (category id, 255 unlabelled)")]

    def scan(self, root: Path, split: str, variant: LabelVariant) -> Files:
        images, labels = self._folders(root)
        return _scan(images / split, ".jpg") | _scan(labels / split, ".png")

    def pair(self, root: Path, split: str, variant: LabelVariant, files: Files) -> list[Entry]:
        image_dir, label_dir = (folder / split for folder in self._folders(root))
        images = {path: stat for path, stat in files.items() if path.endswith(".jpg")}
        labels = {path: stat for path, stat in files.items() if path.endswith(".png")}
        return _pair_by_stem(
            images,
            labels,
            lambda image: str(label_dir / (Path(image).stem + ".png")),
            lambda label: str(image_dir / (Path(label).stem + ".jpg")),
        )


def _pair_listed(
    names: Sequence[str],
    files: Files,
    image_candidates: Callable[[str], list[str]],
    label_candidates: Callable[[str], list[str]],
) -> list[Entry]:
    """Samples named by a list file: each name's first existing image and label candidate; a missing one is a
    problem naming the first candidate (the data set's own place for it)."""
    entries = []
    for name in dict.fromkeys(names):  # in the list's order, each name once
        images, labels = image_candidates(name), label_candidates(name)
        image = next((path for path in images if path in files), None)
        label = next((path for path in labels if path in files), None)
        if image is None and label is None:
            problem = f"{name!r} (listed) has neither its image {images[0]} nor its label {labels[0]}"
        elif image is None:
            problem = f"label {label} has no image: expected {images[0]}"
        elif label is None:
            problem = f"image {image} has no label: expected {' or '.join(labels)}"
        else:
            problem = None
        entries.append(Entry(image or images[0], label or labels[0], problem))
    return entries


class VOCLayout(Layout):
    name = "voc"
    title = "Pascal VOC 2012"
    files = "JPEGImages/*.jpg, SegmentationClass/*.png and ImageSets/Segmentation/<split>.txt"
    labels = "voc"
    aliases = {"training": "train", "validation": "val", "train_aug": "trainaug", "aug": "trainaug"}
    unlabelled = {"test": "Pascal VOC 2012's test labels are not public: score on 'val'"}
    AUGMENTED = "trainaug"

    def find_root(self, path: Path) -> Path | None:
        for root in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
            if all((root / name).is_dir() for name in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation")):
                return root
        return None

    @staticmethod
    def sbd_root(root: Path) -> Path | None:
        """SBD's `dataset` folder (`cls/*.mat`, `train.txt`, `val.txt`) beside the VOC folder: in it, in a folder
        next to it or next to `VOCdevkit` (e.g. `benchmark_RELEASE/dataset`), or None."""
        bases = [root, root.parent, root.parent.parent]
        for base in dict.fromkeys(bases):
            try:
                children = sorted(entry.path for entry in os.scandir(base) if entry.is_dir())
            except OSError:
                continue
            for child in children:
                for candidate in (Path(child), Path(child) / "dataset"):
                    if (candidate / "cls").is_dir() and (candidate / "train.txt").is_file():
                        return candidate
        return None

    def splits(self, root: Path) -> list[str]:
        listed = sorted(path.stem for path in (root / "ImageSets" / "Segmentation").glob("*.txt"))
        return listed + ([self.AUGMENTED] if self.sbd_root(root) is not None else [])

    def missing_split_hint(self, root: Path, split: str) -> str:
        if split == self.AUGMENTED:
            return (
                ". The augmented training set (10,582 images) needs SBD beside the VOC folder: the 'dataset' folder of "
                "benchmark_RELEASE (cls/*.mat, train.txt, val.txt), e.g. VOCdevkit/../benchmark_RELEASE/dataset"
            )
        return ""

    def variants(self, root: Path) -> list[LabelVariant]:
        return [LabelVariant("SegmentationClass", None, "SegmentationClass/*.png (palette indices, 255 ignored)")]

    def scan(self, root: Path, split: str, variant: LabelVariant) -> Files:
        segmentation = root / "ImageSets" / "Segmentation"
        files = _scan(root / "JPEGImages", ".jpg") | _scan(root / "SegmentationClass", ".png")
        if split != self.AUGMENTED:
            return files | _scan_files(segmentation / f"{split}.txt")
        sbd = self.sbd_root(root)
        lists = _scan_files(segmentation / "train.txt", segmentation / "val.txt", sbd / "train.txt", sbd / "val.txt")
        return files | lists | _scan(sbd / "cls", ".mat") | _scan(sbd / "img", ".jpg")

    def pair(self, root: Path, split: str, variant: LabelVariant, files: Files) -> list[Entry]:
        segmentation = root / "ImageSets" / "Segmentation"
        sbd = self.sbd_root(root) if split == self.AUGMENTED else None
        if sbd is None:
            names = _read_list(segmentation / f"{split}.txt")
        else:
            # VOC's own training images and SBD's train + val, less VOC's validation images (10,582 in the releases).
            validation = set(_read_list(segmentation / "val.txt"))
            listed = [*_read_list(segmentation / "train.txt"), *_read_list(sbd / "train.txt")]
            names = sorted({name for name in [*listed, *_read_list(sbd / "val.txt")] if name not in validation})

        def images(name: str) -> list[str]:
            own = [str(root / "JPEGImages" / f"{name}.jpg")]
            return own + ([str(sbd / "img" / f"{name}.jpg")] if sbd is not None else [])

        def labels(name: str) -> list[str]:
            # VOC's own annotation where there is one (finer, with its 255 boundaries), SBD's otherwise.
            own = [str(root / "SegmentationClass" / f"{name}.png")]
            return own + ([str(sbd / "cls" / f"{name}.mat")] if sbd is not None else [])

        return _pair_listed(names, files, images, labels)


LAYOUTS: tuple[Layout, ...] = (
    CityscapesLayout(),
    ADE20KLayout(),
    CocoStuff10KLayout(),
    CocoStuff164KLayout(),
    VOCLayout(),
)


# ---------------------------------------------------------------------------------------------------------------------
# Headers: sizes without decoding
# ---------------------------------------------------------------------------------------------------------------------


def mat_label_size(path: str) -> tuple[int, int]:
    """(height, width) of a `.mat` label (COCO-Stuff-10K's `S`, SBD's `GTcls.Segmentation`)."""
    import scipy.io

    shapes = {name: shape for name, shape, _ in scipy.io.whosmat(path)}
    if "S" in shapes and len(shapes["S"]) == 2:
        return tuple(shapes["S"])
    return tuple(read_mat_label(path).shape)


def read_mat_label(source: str | os.PathLike | IO[bytes]) -> np.ndarray:
    """A `.mat` label as an `(H, W)` map of raw label values.

    COCO-Stuff-10K's `S` holds the COCO category id (1..182) with 0 for unlabelled pixels; it is returned as `S - 1`,
    the stuffthingmaps convention of COCO-Stuff-164K (category id - 1, 255 unlabelled), which
    `label_mapping="cocostuff"` maps to the 171 classes. SBD's `GTcls.Segmentation` holds VOC class ids (0
    background, 1..20), returned as they are.

    Raises `ValueError` naming the variables found when the file holds neither.
    """
    import scipy.io

    mat = scipy.io.loadmat(source, variable_names=("S", "GTcls"), struct_as_record=False)
    if "S" in mat:
        values = np.asarray(mat["S"])
        if values.ndim != 2:
            raise ValueError(f"its label matrix S has shape {values.shape}; expected (height, width)")
        raw = values.astype(np.int64) - 1
        raw[values == 0] = 255
        return raw.astype(np.uint8) if raw.max(initial=0) < 256 and raw.min(initial=0) >= 0 else raw
    if "GTcls" in mat:
        segmentation = np.asarray(mat["GTcls"].flat[0].Segmentation)
        if segmentation.ndim != 2:
            raise ValueError(f"its GTcls.Segmentation has shape {segmentation.shape}; expected (height, width)")
        return segmentation.astype(np.uint8) if segmentation.max(initial=0) < 256 else segmentation.astype(np.int64)
    if hasattr(source, "seek"):
        source.seek(0)
    found = sorted(name for name, _, _ in scipy.io.whosmat(source))
    raise ValueError(
        f"holds neither COCO-Stuff-10K's label matrix S nor SBD's GTcls.Segmentation (its variables: {found})"
    )


def _upright_size(path: str) -> tuple[tuple[int, int], str]:
    """(height, width) of an image file as decoded (EXIF orientation applied), and its mode, from its header."""
    with PIL.Image.open(path) as image:
        width, height = image.size
        # A PNG's EXIF is known before its pixels only when its eXIf chunk comes first; asking otherwise decodes it.
        if image.format != "PNG" or "exif" in image.info:
            if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # a quarter turn swaps the sides
                width, height = height, width
        return (height, width), image.mode


def _check_header(entry: Entry) -> Entry:
    """`entry` with a problem when its files' headers are unreadable, its label is not a single-channel map, or image
    and label differ in size (sizes as decoded: EXIF orientation applied)."""
    if entry.problem is not None:
        return entry
    try:
        image_size, _ = _upright_size(entry.image)
    except Exception as error:  # any unreadable file is reported, never raised: the bad-sample policy decides
        return Entry(entry.image, entry.label, f"cannot read the image {entry.image}: {error}")
    try:
        if entry.label.endswith(".mat"):
            label_size, mode = mat_label_size(entry.label), "L"
        else:
            label_size, mode = _upright_size(entry.label)
    except Exception as error:
        return Entry(entry.image, entry.label, f"cannot read the label {entry.label}: {error}")
    if mode in ("RGB", "RGBA", "CMYK", "LA"):
        return Entry(
            entry.image, entry.label, f"the label {entry.label} is a {mode} image; expected a single-channel map"
        )
    if image_size != label_size:
        return Entry(
            entry.image,
            entry.label,
            f"image {entry.image} is {image_size[0]}x{image_size[1]} but its label {entry.label} is "
            f"{label_size[0]}x{label_size[1]} (HxW)",
        )
    return entry


def _check_headers(entries: list[Entry]) -> list[Entry]:
    # Threads overlap the file system's latency (a cold disk, a network mount); parsing a header is cheap.
    with ThreadPoolExecutor(max_workers=_HEADER_THREADS) as pool:
        return list(pool.map(_check_header, entries, chunksize=64))


# ---------------------------------------------------------------------------------------------------------------------
# A recognised folder
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderLayout:
    """A folder recognised as `layout`, with its data set root."""

    layout: Layout
    root: Path
    path: Path  # as the user named it

    def describe(self) -> str:
        return f"the {self.layout.title} folder {self.path}"

    def split_name(self, name: str) -> str:
        """The data set's own name of split `name` (an alias such as `validation` for Cityscapes' `val`)."""
        return name if name in self.splits() else self.layout.aliases.get(name, name)

    def splits(self) -> list[str]:
        return self.layout.splits(self.root)

    def variant(self, label_mapping: str | None = None) -> LabelVariant:
        """The kind of label file read: the one `label_mapping` asks for, else the preferred one present.

        Raises `ValueError` naming both when `label_mapping` fits no label file of the folder."""
        variants = self.layout.variants(self.root)
        if label_mapping is None:
            return variants[0]
        for variant in variants:
            if variant.label_mapping == label_mapping:
                return variant
        held = "; ".join(
            f"{v.description}: label_mapping={v.label_mapping!r}" if v.label_mapping else f"{v.description}: none"
            for v in variants
        )
        raise ValueError(
            f"label_mapping={label_mapping!r} contradicts {self.describe()}, whose labels need {held}. Leave "
            "label_mapping out to read them as the layout says"
        )

    def index(self, split: str, label_mapping: str | None = None, cache_dir: str | os.PathLike | None = None) -> Any:
        """Split `split` (the data set's name or an alias) as a `datasets.Dataset` of undecoded `"image"` and
        `"label"` file records and `"index_problem"`, from the cached index when the files are unchanged.

        Raises `ValueError` for a split without public labels (with the reason), one the folder lacks (naming those
        it has) and one without any file."""
        from datasets import Dataset, Features, Image, Value

        split = self.split_name(split)
        available = self.splits()
        if split in self.layout.unlabelled:
            raise ValueError(
                f"the {split!r} split of {self.describe()} cannot be used: {self.layout.unlabelled[split]}"
            )
        if split not in available:
            raise ValueError(
                f"{self.describe()} has no split {split!r}; it has {available}"
                + self.layout.missing_split_hint(self.root, split)
            )
        variant = self.variant(label_mapping)
        entries = self._entries(split, variant, cache_dir)
        if not entries:
            raise ValueError(
                f"the {split!r} split of {self.describe()} has no files: expected {self.layout.files} (with "
                f"{variant.description})"
            )
        features = Features(
            {"image": Image(decode=False), "label": Image(decode=False), INDEX_PROBLEM: Value("string")}
        )
        return Dataset.from_dict(
            {
                "image": [{"path": entry.image, "bytes": None} for entry in entries],
                "label": [{"path": entry.label, "bytes": None} for entry in entries],
                INDEX_PROBLEM: [entry.problem for entry in entries],
            },
            features=features,
        )

    def _entries(self, split: str, variant: LabelVariant, cache_dir: str | os.PathLike | None) -> list[Entry]:
        files = self.layout.scan(self.root, split, variant)
        fingerprint = hashlib.sha256(
            json.dumps([INDEX_VERSION, variant.name, sorted(files.items())]).encode()
        ).hexdigest()
        cache = self._cache_file(split, variant, cache_dir)
        cached = _read_cache(cache, fingerprint)
        if cached is not None:
            logger.info("%s, %s: index read from %s", self.describe(), split, cache)
            return cached
        entries = _check_headers(self.layout.pair(self.root, split, variant, files))
        _write_cache(cache, fingerprint, entries)
        problems = sum(entry.problem is not None for entry in entries)
        logger.info(
            "%s, %s: indexed %d samples (%d with a problem), cached in %s",
            self.describe(),
            split,
            len(entries),
            problems,
            cache,
        )
        return entries

    def _cache_file(self, split: str, variant: LabelVariant, cache_dir: str | os.PathLike | None) -> Path:
        key = f"{self.layout.name}|{self.root.resolve()}|{split}|{variant.name}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        folder = index_cache_dir() if cache_dir is None else Path(cache_dir)
        return folder / f"{self.layout.name}-{split}-{digest}.json"


def _read_cache(path: Path, fingerprint: str) -> list[Entry] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint or data.get("version") != INDEX_VERSION:
        return None
    return [Entry(*row) for row in data["entries"]]


def _write_cache(path: Path, fingerprint: str, entries: list[Entry]) -> None:
    """Writes the index atomically (several processes of one run may index at once); a cache that cannot be
    written only costs the next run the indexing."""
    data = {
        "version": INDEX_VERSION,
        "fingerprint": fingerprint,
        "entries": [[e.image, e.label, e.problem] for e in entries],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, path)
    except OSError as error:
        logger.warning("could not cache the folder index in %s: %s", path, error)


def find_layout(dataset: str | os.PathLike) -> FolderLayout | None:
    """The layout of folder `dataset` (or of the data set folder it holds), recognised by its files; None for
    anything else (a saved or parquet data set, an imagefolder, a Hub id, `"demo"`)."""
    path = Path(dataset).expanduser()
    if not path.is_dir():
        return None
    for layout in LAYOUTS:
        # Absolute: the index holds absolute paths, valid from any working directory.
        root = layout.find_root(path.absolute())
        if root is not None:
            return FolderLayout(layout, root, path)
    return None


# ---------------------------------------------------------------------------------------------------------------------
# The label settings a layout implies
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSettings:
    """How a data set's labels are read: the class names (a `LABEL_SETS` name, a list of names, or None: not known
    from the data), the raw-id mapping, the reduction, and the folder layout they come from (None: another source)."""

    labels: str | list[str] | None
    label_mapping: str | None
    reduce_labels: bool
    folder: FolderLayout | None = None


def _names(labels: str | Sequence[str]) -> tuple[str, ...] | None:
    """Class names of a label set name, a comma-separated string or a list (None for an unknown set name)."""
    if isinstance(labels, str):
        if "," in labels:
            return tuple(name.strip() for name in labels.split(",") if name.strip())
        return LABEL_SETS.get(labels)
    return tuple(labels)


def label_settings(
    dataset: str | os.PathLike | None,
    labels: str | Sequence[str] | None = None,
    label_mapping: str | None = None,
    reduce_labels: bool | None = None,
    num_labels: int | None = None,
) -> LabelSettings:
    """The label settings of `dataset`: for a recognised folder layout, its label set, mapping and reduction where
    the arguments leave them unset (None); otherwise the arguments, with no reduction by default.

    `num_labels` is the class count of a model that will be scored on the data. Raises `ValueError` naming both
    sides when an argument (or the model's class count) contradicts the layout."""
    folder = find_layout(dataset) if dataset is not None and str(dataset) != "demo" else None
    if folder is None:
        return LabelSettings(labels, label_mapping, bool(reduce_labels))
    layout, names = folder.layout, LABEL_SETS[folder.layout.labels]
    own = f"the {len(names)} {layout.title} classes (labels={layout.labels!r})"
    if labels is not None and _names(labels) != names:
        given = labels if isinstance(labels, str) else ",".join(labels)
        raise ValueError(
            f"labels={given!r} contradicts {folder.describe()}, whose labels are {own}: leave labels out to use them"
        )
    if num_labels is not None and num_labels != len(names):
        raise ValueError(
            f"the model predicts {num_labels} classes but {folder.describe()} is labelled with {own}: score a model "
            f"trained on {layout.title}"
        )
    variant = folder.variant(label_mapping)
    if reduce_labels is not None and bool(reduce_labels) != layout.reduce_labels:
        own_rule = "0 is 'other', ignored (reduce_labels=True)" if layout.reduce_labels else "no reduction"
        raise ValueError(
            f"reduce_labels={bool(reduce_labels)} contradicts {folder.describe()}, whose labels take {own_rule}: "
            "leave reduce_labels out"
        )
    return LabelSettings(layout.labels, variant.label_mapping, layout.reduce_labels, folder)


def describe_layouts() -> str:
    """One line per known layout: its name and files (for messages and `--help`)."""
    return "; ".join(f"{layout.title} ({layout.files})" for layout in LAYOUTS)


def spread(indices: Sequence[int], count: int) -> list[int]:
    """Up to `count` of `indices`, evenly spread (the first and the last included)."""
    if len(indices) <= count:
        return list(indices)
    return [indices[round(i * (len(indices) - 1) / (count - 1))] for i in range(count)] if count > 1 else [indices[0]]


__all__ = [
    "INDEX_PROBLEM",
    "LAYOUTS",
    "Entry",
    "FolderLayout",
    "LabelSettings",
    "LabelVariant",
    "Layout",
    "describe_layouts",
    "find_layout",
    "index_cache_dir",
    "label_settings",
    "mat_label_size",
    "read_mat_label",
    "spread",
]
