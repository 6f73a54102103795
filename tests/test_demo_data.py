"""The built-in demo data set: determinism, the datasets contract, content that makes the task meaningful, speed."""

from __future__ import annotations

import hashlib

import datasets
import numpy as np
import pytest
from PIL import Image

from fapn_hf.tasks.semantic.demo_data import (
    DEMO_LABELS,
    IGNORE_INDEX,
    VALIDATION_START_INDEX,
    demo_id2label,
    make_demo_dataset,
    make_demo_splits,
    render_sample,
)

WIRE, DOT = DEMO_LABELS.index("wire"), DEMO_LABELS.index("dot")


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """Label maps of samples 0..31 of seed 0, `(32, 128, 128)`."""
    return np.stack([render_sample(index)[1] for index in range(32)])


def _neighbourhood(mask: np.ndarray, reduce) -> np.ndarray:
    """`reduce` (np.logical_and / np.logical_or) of each pixel's 3x3 neighbourhood, `(H, W)` bool -> `(H, W)`."""
    h, w = mask.shape
    padded = np.pad(mask, 1, mode="edge")
    out = padded[1 : h + 1, 1 : w + 1].copy()
    for dy in range(3):
        for dx in range(3):
            reduce(out, padded[dy : dy + h, dx : dx + w], out=out)
    return out


def _component_areas(mask: np.ndarray) -> np.ndarray:
    """Areas of the 8-connected components of `mask` (`(H, W)` bool), by propagating the minimum pixel id."""
    big = mask.size
    ids = np.where(mask, np.arange(big).reshape(mask.shape), big)
    while True:
        padded = np.pad(ids, 1, constant_values=big)
        h, w = mask.shape
        neighbours = np.min([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)
        updated = np.where(mask, neighbours, big)
        if np.array_equal(updated, ids):
            break
        ids = updated
    return np.unique(ids[mask], return_counts=True)[1]


def test_label_map():
    assert DEMO_LABELS[0] == "background" and 2 <= len(DEMO_LABELS) <= 8
    assert demo_id2label() == {i: name for i, name in enumerate(DEMO_LABELS)}
    assert IGNORE_INDEX == 255


def test_sample_contract():
    image, label = render_sample(3, size=(96, 160))
    assert image.dtype == np.uint8 and image.shape == (96, 160, 3)
    assert label.dtype == np.uint8 and label.shape == (96, 160)
    assert set(np.unique(label)) <= set(range(len(DEMO_LABELS))) | {IGNORE_INDEX}


def test_same_seed_and_index_are_identical_and_others_differ():
    image, label = render_sample(7, seed=3)
    again_image, again_label = render_sample(7, seed=3)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(label, again_label)
    assert not np.array_equal(image, render_sample(8, seed=3)[0])
    assert not np.array_equal(image, render_sample(7, seed=4)[0])
    assert not np.array_equal(label, render_sample(8, seed=3)[1])


def test_sample_does_not_depend_on_dataset_size_or_start():
    image, label = render_sample(5, seed=1)
    for dataset, row in ((make_demo_dataset(3, seed=1, start_index=4), 1), (make_demo_dataset(8, seed=1), 5)):
        np.testing.assert_array_equal(np.asarray(dataset[row]["image"]), image)
        np.testing.assert_array_equal(np.asarray(dataset[row]["label"]), label)


def test_dataset_features_decoding_and_exact_label_round_trip():
    dataset = make_demo_dataset(4, seed=2, size=(64, 96))
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == 4
    assert dataset.features == datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    for index, row in enumerate(dataset):
        assert isinstance(row["image"], Image.Image) and isinstance(row["label"], Image.Image)
        assert (row["image"].mode, row["label"].mode) == ("RGB", "L")
        assert row["image"].size == row["label"].size == (96, 64)  # PIL sizes are (width, height)
        image, label = render_sample(index, seed=2, size=(64, 96))
        np.testing.assert_array_equal(np.asarray(row["image"]), image)
        np.testing.assert_array_equal(np.asarray(row["label"]), label)


def test_every_class_appears(labels):
    present = set(np.unique(labels))
    assert set(range(len(DEMO_LABELS))) <= present
    assert present <= set(range(len(DEMO_LABELS))) | {IGNORE_INDEX}


def test_dots_are_small_objects(labels):
    areas = np.concatenate([_component_areas(label == DOT) for label in labels])
    assert (areas <= 30).sum() >= 32, "expected many dots of at most 30 pixels"
    assert np.median(areas) <= 20


def test_wires_are_thin(labels):
    wire = labels == WIRE
    assert wire.mean() > 0.003
    # A 3x3 erosion removes a structure at most 3 px wide almost entirely (the wider ones keep a 1 px core).
    eroded = np.stack([_neighbourhood(mask, np.logical_and) for mask in wire]) & wire
    assert eroded.sum() < 0.15 * wire.sum()


def test_many_pixels_lie_on_class_boundaries(labels):
    fractions = []
    for label in labels:
        valid = label != IGNORE_INDEX
        differs = np.zeros(label.shape, bool)
        padded = np.pad(label, 1, mode="edge")
        for dy in range(3):
            for dx in range(3):
                neighbour = padded[dy : dy + label.shape[0], dx : dx + label.shape[1]]
                differs |= (neighbour != label) & (neighbour != IGNORE_INDEX)
        fractions.append((differs & valid).mean())
    assert np.mean(fractions) > 0.05
    assert min(fractions) > 0.01


def test_ignore_region_is_optional(labels):
    assert sum((label == IGNORE_INDEX).any() for label in labels) >= 4
    assert 0 < (labels == IGNORE_INDEX).mean() < 0.2
    for index in range(32):
        plain = render_sample(index, ignore_region=False)[1]
        assert not (plain == IGNORE_INDEX).any()
        # Switching the ignore region off changes nothing but the ignored pixels.
        labelled = labels[index] != IGNORE_INDEX
        np.testing.assert_array_equal(plain[labelled], labels[index][labelled])


def test_splits_are_disjoint_and_validation_is_stable():
    splits = make_demo_splits(num_train=24, num_validation=8, seed=5)
    assert isinstance(splits, datasets.DatasetDict) and set(splits) == {"train", "validation"}
    assert (len(splits["train"]), len(splits["validation"])) == (24, 8)

    def digests(split: datasets.Dataset) -> set[str]:
        return {hashlib.sha1(np.asarray(image).tobytes()).hexdigest() for image in split["image"]}

    train, validation = digests(splits["train"]), digests(splits["validation"])
    assert len(train) == 24 and len(validation) == 8 and not train & validation
    np.testing.assert_array_equal(
        np.asarray(splits["validation"][0]["image"]), render_sample(VALIDATION_START_INDEX, seed=5)[0]
    )


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        render_sample(-1)
    with pytest.raises(ValueError, match="size"):
        render_sample(0, size=(8, 128))
