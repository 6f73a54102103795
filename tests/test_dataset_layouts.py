"""Data sets as users download them: each layout as a small fabricated tree with the real file names and formats
(PNG, JPEG, palette PNG, `.mat`), recognised, paired, mapped, checked, cached, trained for a step and evaluated."""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fapn_hf import cli
from fapn_hf.labels import (
    ADE20K_LABELS,
    CITYSCAPES_LABELS,
    COCO_STUFF_LABELS,
    VOC_LABELS,
    VOC_PALETTE,
    label_maps,
    voc_palette,
)
from fapn_hf.tasks.semantic import TASK as SEMANTIC
from fapn_hf.tasks.semantic import data as data_module
from fapn_hf.tasks.semantic import layouts
from fapn_hf.tasks.semantic.data import (
    DataError,
    LabelSpec,
    MissingSplitError,
    SegmentationDataset,
    check_samples,
    decode_sample,
    load_segmentation_dataset,
)
from fapn_hf.tasks.semantic.layouts import INDEX_PROBLEM, find_layout, label_settings, read_mat_label
from fapn_hf.training.args import DataArguments, FaPNTrainingArguments, ModelArguments, parse_arguments
from fapn_hf.training.builders import apply_label_settings
from fapn_hf.training.run import main, run_training

REPO_ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 40, 56  # every fabricated image; crops are smaller


@pytest.fixture(autouse=True)
def _index_cache(tmp_path, monkeypatch):
    """Each test indexes into its own cache folder."""
    monkeypatch.setenv(layouts.INDEX_CACHE_ENV, str(tmp_path / "index-cache"))


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _photo(path: Path, height: int = HEIGHT, width: int = WIDTH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rng(path.name).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def _regions(values, name: str, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A label map of vertical bands, one per value (so every value is present), shuffled by `name`."""
    values = np.array(values)
    order = _rng(name).permutation(len(values))
    bands = np.minimum(np.arange(width) * len(values) // width, len(values) - 1)
    return np.broadcast_to(values[order][bands], (height, width)).copy()


def _png(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8))
    if palette:
        image.putpalette(voc_palette().flatten().tolist())  # an "L" image with a palette is a "P" image
        assert image.mode == "P"
    image.save(path)


# ---------------------------------------------------------------------------------------------------------------------
# Fabricated trees, with the real names (and the files a real download holds beside them)
# ---------------------------------------------------------------------------------------------------------------------

CITYSCAPES_RAW = (0, 7, 8, 11, 21, 23, 26)  # unlabeled, road, sidewalk, building, vegetation, sky, car
CITYSCAPES_FRAMES = {
    "train": {"aachen": ["000000_000019", "000001_000019"], "bochum": ["000000_001097"]},
    "val": {"frankfurt": ["000000_000294", "000000_000576"]},
    "test": {"berlin": ["000000_000019"]},
}


def make_cityscapes(root: Path, train_ids: bool = False) -> Path:
    for split, cities in CITYSCAPES_FRAMES.items():
        for city, frames in cities.items():
            for frame in frames:
                stem = f"{city}_{frame}"
                _photo(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                gt = root / "gtFine" / split / city
                raw = _regions(CITYSCAPES_RAW, stem) if split != "test" else np.zeros((HEIGHT, WIDTH))
                _png(gt / f"{stem}_gtFine_labelIds.png", raw)
                _png(gt / f"{stem}_gtFine_instanceIds.png", raw)  # not labels: ignored
                _photo(gt / f"{stem}_gtFine_color.png")
                (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
                if train_ids:  # what createTrainIdLabelImgs writes: the 34 -> 19 table applied
                    train = LabelSpec(19, mapping="cityscapes").apply(raw)
                    _png(gt / f"{stem}_gtFine_labelTrainIds.png", train)
    (root / "license.txt").write_text("cityscapes")
    return root


def make_ade20k(parent: Path) -> Path:
    root = parent / "ADEChallengeData2016"
    for split, prefix, count in (("training", "ADE_train", 3), ("validation", "ADE_val", 2)):
        for index in range(1, count + 1):
            stem = f"{prefix}_{index:08d}"
            Image.fromarray(_rng(stem).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(
                _mkdir(root / "images" / split) / f"{stem}.jpg", quality=95
            )
            _png(root / "annotations" / split / f"{stem}.png", _regions((0, 1, 3, 13, 150), stem))
    (root / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n")
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# COCO category ids (1-based): person 1, unused 12 ("street sign", ignored), banner 92, sky-other 157.
COCO_IDS = (0, 1, 12, 92, 157)  # 0: unlabelled in the 10K .mat files


def make_cocostuff10k(root: Path) -> Path:
    names = {
        "train": ["COCO_train2014_000000000077", "COCO_train2014_000000000081", "COCO_train2014_000000000086"],
        "test": ["COCO_train2014_000000000321", "COCO_train2014_000000000508"],
    }
    for name in (n for split in names.values() for n in split):
        Image.fromarray(_rng(name).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(
            _mkdir(root / "images") / f"{name}.jpg"
        )
        labels = _regions(COCO_IDS, name).astype(np.uint16)
        scipy.io.savemat(
            _mkdir(root / "annotations") / f"{name}.mat",
            {"S": labels, "names": np.array(["unlabeled", "person"], dtype=object), "captions": np.array(["a"])},
        )
    _mkdir(root / "imageLists")
    for split, listed in names.items():
        (root / "imageLists" / f"{split}.txt").write_text("\n".join(listed) + "\n")
    (root / "imageLists" / "all.txt").write_text("\n".join(names["train"] + names["test"]) + "\n")
    return root


def make_cocostuff164k(root: Path) -> Path:
    for split, count in (("train2017", 3), ("val2017", 2)):
        for index in range(count):
            stem = f"{9 + 30 * index + (0 if split == 'train2017' else 130):012d}"
            Image.fromarray(_rng(stem).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(
                _mkdir(root / "images" / split) / f"{stem}.jpg"
            )
            # The stuffthingmaps convention: category id - 1, 255 unlabelled.
            _png(root / "stuffthingmaps_trainval2017" / split / f"{stem}.png", _regions((255, 0, 11, 91, 156), stem))
    return root


VOC_SPLITS = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033", "2007_000042"]}
SBD_SPLITS = {"train": ["2007_000039", "2008_000002", "2007_000033"], "val": ["2008_000003"]}


def make_voc(parent: Path, sbd: bool = True) -> Path:
    root = parent / "VOCdevkit" / "VOC2012"
    names = sorted({n for split in (*VOC_SPLITS.values(), *SBD_SPLITS.values()) for n in split})
    for name in names:
        Image.fromarray(_rng(name).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(
            _mkdir(root / "JPEGImages") / f"{name}.jpg"
        )
    for name in (n for split in VOC_SPLITS.values() for n in split):
        _png(root / "SegmentationClass" / f"{name}.png", _regions((0, 1, 15, 255), name), palette=True)
        _photo(root / "SegmentationObject" / f"{name}.png")  # instance masks: not read
    segmentation = _mkdir(root / "ImageSets" / "Segmentation")
    for split, listed in VOC_SPLITS.items():
        (segmentation / f"{split}.txt").write_text("\n".join(listed) + "\n")
    (segmentation / "trainval.txt").write_text("\n".join(VOC_SPLITS["train"] + VOC_SPLITS["val"]) + "\n")
    _mkdir(root / "Annotations")
    if sbd:
        dataset = _mkdir(parent / "benchmark_RELEASE" / "dataset")
        for name in (n for split in SBD_SPLITS.values() for n in split):
            segmentation_map = _regions((0, 7, 12), f"sbd-{name}").astype(np.uint8)
            scipy.io.savemat(
                _mkdir(dataset / "cls") / f"{name}.mat",
                {"GTcls": {"Segmentation": segmentation_map, "Boundaries": np.zeros((1, 20)), "CategoriesPresent": 7}},
            )
            Image.open(root / "JPEGImages" / f"{name}.jpg").save(_mkdir(dataset / "img") / f"{name}.jpg")
        for split, listed in SBD_SPLITS.items():
            (dataset / f"{split}.txt").write_text("\n".join(listed) + "\n")
    return root


MAKERS = {
    "cityscapes": make_cityscapes,
    "ade20k": make_ade20k,
    "cocostuff10k": make_cocostuff10k,
    "cocostuff164k": make_cocostuff164k,
    "voc": make_voc,
}


def _tree(tmp_path: Path, name: str) -> Path:
    """The folder a user would pass: the data set root (or the folder holding ADEChallengeData2016 / VOCdevkit)."""
    folder = tmp_path / f"data-{name}"
    MAKERS[name](folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# Recognition, pairing and the label values each layout implies
# ---------------------------------------------------------------------------------------------------------------------

# (layout, train split, validation split by its own name, labels, mapping, reduction)
EXPECTED = {
    "cityscapes": ("train", "val", "cityscapes", "cityscapes", False),
    "ade20k": ("training", "validation", "ade20k", None, True),
    "cocostuff10k": ("train", "test", "cocostuff", "cocostuff", False),
    "cocostuff164k": ("train2017", "val2017", "cocostuff", "cocostuff", False),
    "voc": ("train", "val", "voc", None, False),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_each_layout_is_recognised_by_its_files_and_brings_its_labels(tmp_path, name):
    folder = _tree(tmp_path, name)
    found = find_layout(folder)
    assert found is not None and found.layout.name == name
    train, validation, labels, mapping, reduce = EXPECTED[name]
    assert found.split_name("train") == train and found.split_name("validation") == validation
    settings = label_settings(folder)
    assert (settings.labels, settings.label_mapping, settings.reduce_labels) == (labels, mapping, reduce)
    splits = load_segmentation_dataset(str(folder))  # the recipes' default split names: train, validation
    assert set(splits) == {"train", "validation"} and splits["train"].column_names == ["image", "label", INDEX_PROBLEM]
    # Lazy: rows hold paths, no bytes.
    row = splits["train"][0]
    assert row["image"]["bytes"] is None and Path(row["image"]["path"]).is_file() and row[INDEX_PROBLEM] is None


def test_other_folders_are_no_layout(tmp_path):
    (tmp_path / "images").mkdir()
    assert find_layout(tmp_path) is None and find_layout(tmp_path / "missing") is None and find_layout("demo") is None
    with pytest.raises(FileNotFoundError, match=r"neither a saved dataset.* nor a data set folder as downloaded: Cit"):
        load_segmentation_dataset(str(tmp_path))
    cityscapes = _tree(tmp_path, "cityscapes")
    with pytest.raises(FileNotFoundError, match=r"lies inside the Cityscapes folder .*data-cityscapes: pass that"):
        load_segmentation_dataset(str(cityscapes / "leftImg8bit"))


def _stem(path: str, suffixes=("_leftImg8bit.png", "_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")) -> str:
    name = Path(path).name
    for suffix in suffixes:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_images_and_labels_pair_by_the_data_sets_own_names(tmp_path, name):
    folder = _tree(tmp_path, name)
    splits = load_segmentation_dataset(str(folder))
    for split in splits.values():
        assert len(split) >= 2 and not any(split[INDEX_PROBLEM])
        for row in split:
            assert _stem(row["image"]["path"]) == _stem(row["label"]["path"])
    if name == "cityscapes":  # paired within the city folder, listed by path
        images = [Path(p["path"]).relative_to(folder).as_posix() for p in splits["train"]["image"]]
        assert images == [
            "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
            "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png",
            "leftImg8bit/train/bochum/bochum_000000_001097_leftImg8bit.png",
        ]


def _decoded(folder: Path, split: str = "validation") -> tuple[np.ndarray, np.ndarray, dict]:
    """The first sample of a split decoded as training would decode it, and its raw label file's values."""
    settings = label_settings(folder)
    names = settings.labels
    from fapn_hf.labels import LABEL_SETS

    spec = LabelSpec(len(LABEL_SETS[names]), 255, settings.label_mapping, settings.reduce_labels)
    rows = load_segmentation_dataset(str(folder), label_mapping=settings.label_mapping)[split]
    image, labels = decode_sample(rows[0], 0, spec)
    return image, labels, rows[0]


def test_cityscapes_raw_ids_become_the_19_train_ids(tmp_path):
    folder = _tree(tmp_path, "cityscapes")
    image, labels, row = _decoded(folder)
    raw = np.array(Image.open(row["label"]["path"]))
    assert image.shape == (HEIGHT, WIDTH, 3) and labels.dtype == np.int64
    expected = {0: 255, 7: CITYSCAPES_LABELS.index("road"), 8: CITYSCAPES_LABELS.index("sidewalk"), 11: 2, 21: 8}
    expected |= {23: CITYSCAPES_LABELS.index("sky"), 26: CITYSCAPES_LABELS.index("car")}
    for value, class_id in expected.items():
        assert (labels[raw == value] == class_id).all() and (raw == value).any()


def test_cityscapes_train_id_files_are_taken_as_they_are_and_a_flag_can_choose_the_raw_ones(tmp_path):
    folder = make_cityscapes(tmp_path / "cityscapes", train_ids=True)
    settings = label_settings(folder)
    assert settings.label_mapping is None  # createTrainIdLabelImgs ran: its files are read, not mapped
    rows = load_segmentation_dataset(str(folder))["train"]
    assert all(p["path"].endswith("_gtFine_labelTrainIds.png") for p in rows["label"])
    _, labels = decode_sample(rows[0], 0, LabelSpec(19))
    np.testing.assert_array_equal(labels, np.array(Image.open(rows[0]["label"]["path"])))
    # Asking for the 34 -> 19 mapping reads the labelIds files instead: the same class ids.
    assert label_settings(folder, label_mapping="cityscapes").label_mapping == "cityscapes"
    raw_rows = load_segmentation_dataset(str(folder), label_mapping="cityscapes")["train"]
    assert all(p["path"].endswith("_gtFine_labelIds.png") for p in raw_rows["label"])
    _, mapped = decode_sample(raw_rows[0], 0, LabelSpec(19, mapping="cityscapes"))
    np.testing.assert_array_equal(mapped, labels)


def test_ade20k_label_zero_is_other_and_ignored(tmp_path):
    _, labels, row = _decoded(_tree(tmp_path, "ade20k"))
    raw = np.array(Image.open(row["label"]["path"]))
    for value, class_id in {0: 255, 1: ADE20K_LABELS.index("wall"), 3: 2, 13: 12, 150: 149}.items():
        assert (labels[raw == value] == class_id).all() and (raw == value).any()
    assert ADE20K_LABELS[12] == "person"


def test_cocostuff10k_mat_labels_map_to_the_171_classes(tmp_path):
    _, labels, row = _decoded(_tree(tmp_path, "cocostuff10k"))
    assert row["label"]["path"].endswith(".mat")
    s = scipy.io.loadmat(row["label"]["path"])["S"]
    expected = {0: 255, 1: COCO_STUFF_LABELS.index("person"), 12: 255, 92: COCO_STUFF_LABELS.index("banner")}
    expected[157] = COCO_STUFF_LABELS.index("sky-other")
    for value, class_id in expected.items():
        assert (labels[s == value] == class_id).all() and (s == value).any()
    assert expected[92] == 80  # the first stuff class follows the 80 things


def test_cocostuff164k_stuffthingmaps_map_to_the_171_classes(tmp_path):
    _, labels, row = _decoded(_tree(tmp_path, "cocostuff164k"))
    raw = np.array(Image.open(row["label"]["path"]))
    expected = {255: 255, 0: 0, 11: 255, 91: COCO_STUFF_LABELS.index("banner"), 156: 145}
    for value, class_id in expected.items():
        assert (labels[raw == value] == class_id).all() and (raw == value).any()
    assert COCO_STUFF_LABELS[145] == "sky-other"


def test_voc_palette_pngs_read_as_indices_with_255_ignored(tmp_path):
    _, labels, row = _decoded(_tree(tmp_path, "voc"))
    label_image = Image.open(row["label"]["path"])
    assert label_image.mode == "P"
    indices = np.array(label_image)
    assert set(np.unique(indices)) == {0, 1, 15, 255}
    np.testing.assert_array_equal(labels, indices)  # indices are class ids; 255 is the ignore index
    assert VOC_LABELS[15] == "person" and VOC_PALETTE[15] == (192, 128, 128) and VOC_PALETTE[1] == (128, 0, 0)
    assert tuple(voc_palette()[255]) == (224, 224, 192)


def test_voc_augmented_training_set_joins_sbd(tmp_path):
    folder = _tree(tmp_path, "voc")
    assert find_layout(folder).splits() == ["train", "trainval", "val", "trainaug"]
    rows = load_segmentation_dataset(str(folder), train_split="train_aug")["train"]
    names = [Path(p["path"]).stem for p in rows["image"]]
    # VOC train + SBD train + SBD val, less VOC val (2007_000033 is in SBD train but VOC val).
    assert names == ["2007_000032", "2007_000039", "2008_000002", "2008_000003"]
    labels = {Path(p["path"]).stem: Path(p["path"]) for p in rows["label"]}
    assert labels["2007_000039"].suffix == ".png" and labels["2008_000002"].suffix == ".mat"  # VOC's own first
    spec = LabelSpec(21)
    _, sbd_labels = decode_sample(rows[2], 2, spec)
    expected = scipy.io.loadmat(labels["2008_000002"], struct_as_record=False)["GTcls"][0, 0].Segmentation
    np.testing.assert_array_equal(sbd_labels, expected)
    assert set(np.unique(sbd_labels)) == {0, 7, 12}

    plain = make_voc(tmp_path / "plain", sbd=False).parents[1]
    with pytest.raises(ValueError, match=r"no split 'trainaug' to train on.*needs SBD beside the VOC folder"):
        load_segmentation_dataset(str(plain), train_split="trainaug")


def test_read_mat_label_names_what_a_foreign_mat_file_holds(tmp_path):
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"labels": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"neither COCO-Stuff-10K's label matrix S nor SBD's .*\['labels'\]"):
        read_mat_label(path)
    scipy.io.savemat(path, {"S": np.array([[0, 1], [183, 2]], dtype=np.uint16)})
    np.testing.assert_array_equal(read_mat_label(path), [[255, 0], [182, 1]])


# ---------------------------------------------------------------------------------------------------------------------
# Splits and the arguments a layout implies
# ---------------------------------------------------------------------------------------------------------------------


def test_split_names_as_each_data_set_names_them_or_their_aliases(tmp_path):
    cityscapes = _tree(tmp_path, "cityscapes")
    for train, validation in (("train", "val"), ("training", "validation"), ("train", "validation")):
        splits = load_segmentation_dataset(str(cityscapes), train_split=train, validation_split=validation)
        assert (len(splits["train"]), len(splits["validation"])) == (3, 2)
    ade = _tree(tmp_path, "ade20k")
    splits = load_segmentation_dataset(str(ade), train_split="train", validation_split="val")
    assert (len(splits["train"]), len(splits["validation"])) == (3, 2)
    coco = _tree(tmp_path, "cocostuff10k")
    assert len(load_segmentation_dataset(str(coco), train_split=None)["validation"]) == 2  # 10K's test split
    assert len(load_segmentation_dataset(str(coco), validation_split="test")["validation"]) == 2


def test_cityscapes_test_split_is_refused_with_the_reason(tmp_path):
    folder = _tree(tmp_path, "cityscapes")
    with pytest.raises(ValueError, match=r"'test' split of the Cityscapes folder .* test labels are not public"):
        load_segmentation_dataset(str(folder), train_split=None, validation_split="test")
    with pytest.raises(MissingSplitError, match=r"has no split 'train_extra'; it has \['test', 'train', 'val'\]"):
        load_segmentation_dataset(str(folder), train_split=None, validation_split="train_extra")


def test_validation_fraction_holds_out_of_a_layouts_training_split(tmp_path):
    splits = load_segmentation_dataset(str(_tree(tmp_path, "ade20k")), validation_fraction=0.25, seed=1)
    assert (len(splits["train"]), len(splits["validation"])) == (2, 1)
    assert all("ADE_train" in p["path"] for p in splits["validation"]["image"])


def _data_args(folder: Path, **changes) -> DataArguments:
    return DataArguments(dataset=str(folder), **changes)


def test_the_layout_fills_unset_label_arguments_and_refuses_contradicting_ones(tmp_path):
    cityscapes = _tree(tmp_path, "cityscapes")
    filled = apply_label_settings(_data_args(cityscapes), SEMANTIC)
    assert (filled.labels, filled.label_mapping, filled.reduce_labels) == ("cityscapes", "cityscapes", False)
    agreeing = _data_args(cityscapes, labels=",".join(CITYSCAPES_LABELS), label_mapping="cityscapes")
    assert apply_label_settings(agreeing, SEMANTIC).label_mapping == "cityscapes"
    with pytest.raises(ValueError, match=r"labels='ade20k' contradicts the Cityscapes folder .*labels='cityscapes'"):
        apply_label_settings(_data_args(cityscapes, labels="ade20k"), SEMANTIC)
    with pytest.raises(ValueError, match=r"label_mapping='cocostuff' contradicts the Cityscapes folder .*labelIds"):
        apply_label_settings(_data_args(cityscapes, label_mapping="cocostuff"), SEMANTIC)
    with pytest.raises(ValueError, match=r"reduce_labels=True contradicts the Cityscapes folder .*no reduction"):
        apply_label_settings(_data_args(cityscapes, reduce_labels=True), SEMANTIC)
    ade = _tree(tmp_path, "ade20k")
    assert apply_label_settings(_data_args(ade), SEMANTIC).reduce_labels is True
    with pytest.raises(ValueError, match=r"reduce_labels=False contradicts the ADE20K folder .*0 is 'other'"):
        apply_label_settings(_data_args(ade, reduce_labels=False), SEMANTIC)
    # Other sources keep the arguments; an unset reduction is none.
    plain = apply_label_settings(_data_args(tmp_path, labels="a,b"), SEMANTIC)
    assert (plain.labels, plain.label_mapping, plain.reduce_labels) == ("a,b", None, False)


def test_reduce_labels_flag_is_unset_unless_given():
    assert DataArguments().reduce_labels is None
    _, data_args, _ = parse_arguments(["--reduce_labels", "--output_dir", "x"])
    assert data_args.reduce_labels is True
    _, data_args, _ = parse_arguments(["--reduce_labels", "false", "--output_dir", "x"])
    assert data_args.reduce_labels is False


# ---------------------------------------------------------------------------------------------------------------------
# Almost-right layouts: reported with the file names before training, under the bad-sample policy
# ---------------------------------------------------------------------------------------------------------------------


def test_a_wrong_pairing_is_caught_and_never_paired_silently(tmp_path):
    folder = _tree(tmp_path, "cityscapes")
    gt = folder / "gtFine" / "train"
    # aachen's second label is replaced by a bochum frame's label put in the aachen folder.
    (gt / "aachen" / "aachen_000001_000019_gtFine_labelIds.png").unlink()
    (gt / "bochum" / "bochum_000000_001097_gtFine_labelIds.png").rename(
        gt / "aachen" / "bochum_000000_001097_gtFine_labelIds.png"
    )
    train = load_segmentation_dataset(str(folder))["train"]
    spec = LabelSpec(19, mapping="cityscapes")
    with pytest.raises(DataError) as error:
        check_samples(train, spec, "fail", "train")
    message = str(error.value)
    assert "3 of 4 train samples cannot be used" in message
    assert "aachen_000001_000019_leftImg8bit.png has no label: expected" in message
    assert "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png" in message
    assert "bochum_000000_001097_leftImg8bit.png has no label" in message
    assert "label " + str(gt / "aachen" / "bochum_000000_001097_gtFine_labelIds.png") + " has no image" in message
    assert "its name is of city 'bochum', its folder 'aachen'" in message
    kept, report = check_samples(train, spec, "skip", "train")
    assert len(kept) == 1 and report.num_skipped == 3
    assert kept[0]["image"]["path"].endswith("aachen_000000_000019_leftImg8bit.png")


def test_labels_of_another_size_and_unreadable_files_are_named(tmp_path):
    folder = _tree(tmp_path, "ade20k")
    annotations = folder / "ADEChallengeData2016" / "annotations" / "training"
    _png(annotations / "ADE_train_00000002.png", np.ones((HEIGHT // 2, WIDTH), dtype=np.uint8))
    (annotations / "ADE_train_00000003.png").write_bytes(b"not a png")
    train = load_segmentation_dataset(str(folder))["train"]
    with pytest.raises(DataError) as error:
        check_samples(train, LabelSpec(150, reduce_labels=True), "fail", "train")
    message = str(error.value)
    assert f"ADE_train_00000002.jpg is {HEIGHT}x{WIDTH} but its label" in message
    assert f"ADE_train_00000002.png is {HEIGHT // 2}x{WIDTH} (HxW)" in message
    assert "cannot read the label" in message and "ADE_train_00000003.png" in message


def test_label_values_outside_the_label_map_are_caught_by_the_spot_check(tmp_path):
    folder = make_cityscapes(tmp_path / "cityscapes", train_ids=True)
    broken = folder / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000576_gtFine_labelTrainIds.png"
    _png(broken, np.full((HEIGHT, WIDTH), 30))
    validation = load_segmentation_dataset(str(folder))["validation"]
    with pytest.raises(DataError, match=r"sample 1: labels \(file .*frankfurt_000000_000576.*\) contain values \[30\]"):
        check_samples(validation, LabelSpec(19), "fail", "validation")


def test_a_split_with_no_files_is_an_error_naming_the_expected_files(tmp_path):
    folder = _tree(tmp_path, "cityscapes")
    for path in (folder / "leftImg8bit" / "val").rglob("*.png"):
        path.unlink()
    for path in (folder / "gtFine" / "val").rglob("*_labelIds.png"):
        path.unlink()
    with pytest.raises(ValueError, match=r"'val' split of the Cityscapes folder .* has no files: expected leftImg8bit"):
        load_segmentation_dataset(str(folder))


def test_a_listed_image_without_its_files_is_named(tmp_path):
    folder = _tree(tmp_path, "cocostuff10k")
    (folder / "annotations" / "COCO_train2014_000000000081.mat").unlink()
    (folder / "imageLists" / "train.txt").write_text("COCO_train2014_000000000077\nCOCO_train2014_000000000081\n")
    train = load_segmentation_dataset(str(folder))["train"]
    assert train[INDEX_PROBLEM] == [
        None,
        f"image {folder / 'images' / 'COCO_train2014_000000000081.jpg'} has no label: expected "
        f"{folder / 'annotations' / 'COCO_train2014_000000000081.mat'}",
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Laziness and the cached index
# ---------------------------------------------------------------------------------------------------------------------


def test_loading_decodes_nothing_and_the_index_is_cached_then_invalidated(tmp_path, monkeypatch):
    folder = _tree(tmp_path, "ade20k")
    decoded = []
    monkeypatch.setattr(data_module, "_decode", lambda *a: decoded.append(a) or (_ for _ in ()).throw(AssertionError))
    load_segmentation_dataset(str(folder))
    assert decoded == []
    cache = tmp_path / "index-cache"
    files = sorted(cache.glob("ade20k-*.json"))
    assert [f.name.split("-")[1] for f in files] == ["training", "validation"]
    assert len(json.loads(files[0].read_text())["entries"]) == 3

    headers = []
    original = layouts._check_header
    monkeypatch.setattr(layouts, "_check_header", lambda entry: headers.append(entry) or original(entry))
    load_segmentation_dataset(str(folder))
    assert headers == []  # both splits from the cache: no file opened

    # A changed file (new size and time), a new file and a removed file each rebuild that split's index.
    annotations = folder / "ADEChallengeData2016" / "annotations" / "training"
    _png(annotations / "ADE_train_00000001.png", np.ones((HEIGHT, WIDTH + 1), dtype=np.uint8))
    rebuilt = load_segmentation_dataset(str(folder))["train"]
    assert len(headers) == 3 and "is 40x57 (HxW)" in rebuilt[INDEX_PROBLEM][0]
    later = time.time() + 5
    os.utime(annotations / "ADE_train_00000002.png", (later, later))
    load_segmentation_dataset(str(folder))
    assert len(headers) == 6
    Image.open(folder / "ADEChallengeData2016" / "images" / "training" / "ADE_train_00000003.jpg").save(
        folder / "ADEChallengeData2016" / "images" / "training" / "ADE_train_00000004.jpg"
    )
    grown = load_segmentation_dataset(str(folder))["train"]
    assert len(grown) == 4 and "ADE_train_00000004.jpg has no label" in grown[INDEX_PROBLEM][3]
    (annotations / "ADE_train_00000002.png").unlink()
    shrunk = load_segmentation_dataset(str(folder))["train"]
    assert sum(p is not None for p in shrunk[INDEX_PROBLEM]) == 3


# ---------------------------------------------------------------------------------------------------------------------
# Trained for a step and evaluated, with no flag but the folder
# ---------------------------------------------------------------------------------------------------------------------

TINY_MODEL = dict(preset="fapn-r18", neck_channels=32, head_channels=64, deformable_groups=4)
TINY_DATA = dict(crop_size=[32, 32], scale_range=[0.75, 1.25], num_visualizations=1)
TINY_TRAINING = dict(
    per_device_train_batch_size=2, per_device_eval_batch_size=2, learning_rate=1e-3, optim="adamw_torch",
    max_steps=1, warmup_steps=0, logging_steps=1, dataloader_num_workers=0, seed=3, save_strategy="no",
    eval_strategy="no", dataloader_pin_memory=False, report_to="none",
)  # fmt: skip
NUM_LABELS = {"cityscapes": 19, "ade20k": 150, "cocostuff10k": 171, "cocostuff164k": 171, "voc": 21}
RECIPES = {
    "cityscapes": "cityscapes_fapn_r50_pointrend.yaml",
    "ade20k": "ade20k_fapn_r50.yaml",
    "cocostuff10k": "cocostuff_maskformer_fapn_r101.yaml",
    "cocostuff164k": "cocostuff_maskformer_fapn_r101.yaml",
    "voc": "voc_aug_fapn_r50.yaml",
}
# The recipe's model made tiny, one step on 32x32 crops, evaluation at the images' own size: no data flag.
TINY_FAPN_FLAGS = ["--preset", "fapn-r18", "--neck_channels", "32", "--head_channels", "64", "--deformable_groups", "4"]
TINY_MASKFORMER_FLAGS = [
    "--backbone", "resnet18", "--neck_channels", "64", "--deformable_groups", "4", "--num_queries", "8",
    "--decoder_layers", "1", "--decoder_hidden_size", "64",
]  # fmt: skip
ONE_STEP_FLAGS = [
    "--pretrained_backbone", "false", "--crop_size", "32", "32", "--max_steps", "1", "--warmup_steps", "0",
    "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2", "--eval_strategy", "no",
    "--save_strategy", "no", "--bf16", "false", "--dataloader_num_workers", "0", "--num_visualizations", "1",
    "--eval_shortest_edge", str(HEIGHT), "--eval_longest_edge", str(WIDTH), "--report_to", "none",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_each_layout_trains_with_its_recipe_and_evaluates_with_no_other_flag(tmp_path, name, capsys):
    """`fapn-train <recipe> --dataset <folder>` and `fapn-evaluate --dataset <folder>`: the folder brings its
    classes, mapping, reduction and split names (only the model is made tiny and the run one step long)."""
    folder = _tree(tmp_path, name)
    output_dir = tmp_path / "run"
    tiny = TINY_MASKFORMER_FLAGS if name.startswith("cocostuff") else TINY_FAPN_FLAGS
    recipe = REPO_ROOT / "recipes" / RECIPES[name]
    assert main([str(recipe), "--dataset", str(folder), *tiny, *ONE_STEP_FLAGS, "--output_dir", str(output_dir)]) == 0
    assert "validation: mIoU" in capsys.readouterr().out
    config = json.loads((output_dir / "config.json").read_text())
    assert len(config["id2label"]) == NUM_LABELS[name]
    assert list(config["id2label"].values()) == list(label_maps(EXPECTED[name][2])[0].values())
    processor = json.loads((output_dir / "preprocessor_config.json").read_text())
    assert processor["do_reduce_labels"] is EXPECTED[name][4]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    for split in ("train", "validation"):
        report = metrics["data"][split]
        assert report["num_skipped"] == 0 and report["decoded_samples"] == report["num_samples"] >= 2
    if name == "voc":
        assert metrics["data"]["train"]["num_samples"] == 4  # trainaug: VOC train + SBD, less VOC val
    assert np.isfinite(metrics["eval"]["eval_mean_iou"])

    scores = tmp_path / "scores.json"
    assert cli.evaluate_main(["--model", str(output_dir), "--dataset", str(folder), "--output", str(scores)]) == 0
    result = json.loads(scores.read_text())
    assert result["num_images"] == metrics["data"]["validation"]["num_samples"] and result["split"] == "validation"
    # The Trainer's evaluation and fapn-evaluate score the same images the same way.
    assert result["mean_iou"] == pytest.approx(metrics["eval"]["eval_mean_iou"], abs=1e-2)
    if name == "cityscapes":
        with pytest.raises(SystemExit, match=r"error: .*'test' split of the Cityscapes folder .* not public"):
            cli.evaluate_main(["--model", str(output_dir), "--dataset", str(folder), "--split", "test"])


@pytest.mark.slow
def test_evaluating_a_model_of_another_label_set_on_a_layout_names_both(tmp_path):
    ade = _tree(tmp_path, "ade20k")
    output_dir = tmp_path / "run"
    run_training(
        ModelArguments(**TINY_MODEL),
        DataArguments(dataset=str(_tree(tmp_path, "voc")), **TINY_DATA),
        FaPNTrainingArguments(output_dir=str(output_dir), **TINY_TRAINING),
    )
    with pytest.raises(SystemExit, match=r"the model predicts 21 classes but the ADE20K folder .* 150 ADE20K classes"):
        cli.evaluate_main(["--model", str(output_dir), "--dataset", str(ade)])


def test_segmentation_dataset_reads_layout_rows_lazily_with_compact_labels(tmp_path):
    from fapn_hf.modeling.image_processing_fapn import FaPNImageProcessor

    folder = _tree(tmp_path, "cityscapes")
    rows = load_segmentation_dataset(str(folder))["validation"]
    dataset = SegmentationDataset(rows, LabelSpec(19, mapping="cityscapes"), None, FaPNImageProcessor(do_resize=False))
    sample = dataset[1]
    image, labels = dataset.load(1)
    assert sample["labels"].dtype.is_signed and sample["labels"].dtype.itemsize == 8
    np.testing.assert_array_equal(sample["labels"].numpy(), labels)
    assert sample["pixel_values"].shape == (3, HEIGHT, WIDTH)


@pytest.mark.parametrize("mapping", [None, "cityscapes", "cocostuff"])
@pytest.mark.parametrize("reduce", [False, True])
def test_the_compact_label_lookup_equals_the_int64_reference_for_every_input_kind(mapping, reduce):
    rng = np.random.default_rng(0)
    raw8 = rng.integers(0, 256, (24, 40)).astype(np.uint8)
    spec = LabelSpec(171, mapping=mapping, reduce_labels=reduce)
    # The reference: every value through the int64 table and the reduction, written out element by element.
    table = {raw: spec.mapping.get(raw, 255) for raw in range(256)} if mapping else {raw: raw for raw in range(256)}
    expected = np.vectorize(lambda v: 255 if reduce and table[v] in (0, 255) else table[v] - reduce)(raw8)
    for source in (raw8, Image.fromarray(raw8), raw8.astype(np.uint16), raw8.astype(np.int32)):
        ids = spec.class_ids(source)
        np.testing.assert_array_equal(ids, expected)
        assert ids.dtype == (np.uint8 if isinstance(source, Image.Image) or source.dtype == np.uint8 else np.int64)
    np.testing.assert_array_equal(spec.apply(raw8), expected)
    assert spec.apply(raw8).dtype == np.int64
    palette_image = Image.fromarray(raw8)
    palette_image.putpalette(voc_palette().flatten().tolist())
    np.testing.assert_array_equal(spec.class_ids(palette_image), expected)  # a palette PNG's indices
