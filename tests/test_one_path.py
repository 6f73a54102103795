"""Every path reads an image the same way and scores it the same way.

For each kind of image file (EXIF-rotated photos, 16-bit, float, transparency, animation, ...): the decoded pixels
match an independent computation of the documented rule, and the data pipeline, the processor, `pipeline`, the
predictor and `fapn-predict` agree exactly. The Trainer's evaluation, `fapn-evaluate` and
`fapn_hf.inference.evaluation.evaluate` give identical metrics, equal to a brute-force computation at each label's
original resolution. Each test runs for every registered family, on its small build (tests/families_small.py).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from families_small import PIXEL_CLASS_FAMILIES, SMALL, SPREAD_CLASSES, missing_families, small_model
from image_kinds import KINDS, ImageKind
from PIL import Image
from transformers import AutoImageProcessor, pipeline

from fapn_hf import FAMILIES, SegmentationPredictor, cli, decode_image, family_of, open_image
from fapn_hf.inference.evaluation import evaluate
from fapn_hf.tasks.semantic.data import LabelSpec, decode_sample, load_segmentation_dataset
from fapn_hf.training.args import FaPNTrainingArguments
from fapn_hf.training.trainer import FaPNTrainer, make_compute_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
FAMILY_NAMES = sorted(FAMILIES)
NAMES = ["background", "blob", "box", "wire"]
# The processor resizes (shorter side 24, longer at most 40): the pipeline and the predictor both go through it.
PROCESSOR = {"size": {"shortest_edge": 24, "longest_edge": 40}}


def processor_of(name: str) -> object:
    """Family `name`'s processor of its small build's preset, resizing as PROCESSOR says."""
    return FAMILIES[name].preset_image_processor(SMALL[name].preset, NAMES, **PROCESSOR)


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> dict[str, Path]:
    """Per family, its small model (seed 0) with the classifier spread so that the random model predicts several
    classes (agreement must hold pixel by pixel), saved with its processor."""
    folders = {}
    for name in PIXEL_CLASS_FAMILIES:
        folder = folders[name] = tmp_path_factory.mktemp(f"one-path-{name}")
        torch.manual_seed(0)
        model = small_model(name, NAMES)
        SPREAD_CLASSES[name](model)
        model.save_pretrained(folder)
        processor_of(name).save_pretrained(folder)
    return folders


def test_every_registered_family_takes_every_path():
    assert missing_families() == [], "add the family's small build to tests/families_small.py"


@pytest.fixture(scope="module")
def kind_files(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    folder = tmp_path_factory.mktemp("kinds")
    return {kind.name: kind.make(folder, seed=index) for index, kind in enumerate(KINDS)}


def _row(image: Path, label: Path) -> dict:
    return {"image": {"path": str(image), "bytes": None}, "label": {"path": str(label), "bytes": None}}


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_every_path_decodes_each_kind_of_file_the_same(kind: ImageKind, kind_files, tmp_path):
    path, expected = kind_files[kind.name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = decode_image(path)
    np.testing.assert_array_equal(decoded, expected)  # the documented rule, computed independently
    said = [str(w.message) for w in caught if "FaPN" in str(w.message)]
    animated = [f"{path} is animated (2 frames): FaPN segments its first frame"]
    assert said == (animated if kind.name == "animated" else [])
    # The data pipeline decodes the file, EXIF orientation and all, and its label of the displayed size fits.
    label = tmp_path / "label.png"
    Image.fromarray(np.zeros(expected.shape[:2], np.uint8)).save(label)
    image, labels = decode_sample(_row(path, label), 0, LabelSpec(4))
    np.testing.assert_array_equal(image, expected)
    assert labels.shape == expected.shape[:2]
    # Each family's processor: a path, a PIL image (upright by EXIF) and the decoded array give the same pixel_values.
    for processor in map(processor_of, FAMILY_NAMES):
        reference = processor(expected, return_tensors="pt")["pixel_values"]
        from_path = processor(str(path), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(from_path, reference, atol=0, rtol=0)
        with Image.open(path) as opened:
            from_pil = processor(opened, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(from_pil, reference, atol=0, rtol=0)
        torch.testing.assert_close(processor(open_image(path), return_tensors="pt")["pixel_values"], reference)


@pytest.mark.parametrize("name", PIXEL_CLASS_FAMILIES)
def test_pipeline_predictor_and_predict_command_give_identical_label_maps(name, model_folders, kind_files, tmp_path):
    model_folder = model_folders[name]
    segmenter = pipeline("image-segmentation", model=str(model_folder))
    assert family_of(segmenter.model) is FAMILIES[name]
    predictor = SegmentationPredictor.from_pretrained(str(model_folder), device="cpu")
    label2id = {name: index for index, name in enumerate(NAMES)}
    paths = [path for path, _ in kind_files.values()]
    assert cli.predict_main(["--model", str(model_folder), "--output_dir", str(tmp_path), *map(str, paths)]) == 0
    classes_seen = set()
    for kind in KINDS:
        path, expected = kind_files[kind.name]
        # transformers' own file reading (load_image) keeps 8 bits and drops alpha: for those kinds the pipeline
        # gets the image decoded by FaPN's rule, as the README says.
        source = str(path) if kind.lossless_in_transformers else open_image(path)
        pipeline_map = np.full(expected.shape[:2], -1)
        for segment in segmenter(source):
            pipeline_map[np.array(segment["mask"]) > 0] = label2id[segment["label"]]
        predicted = predictor.predict(path)
        command_map = np.array(Image.open(tmp_path / f"{path.stem}_labels.png"))
        assert predicted.shape == expected.shape[:2], kind.name
        np.testing.assert_array_equal(pipeline_map, predicted, err_msg=kind.name)
        np.testing.assert_array_equal(command_map, predicted, err_msg=kind.name)
        classes_seen |= set(np.unique(predicted).tolist())
    assert len(classes_seen) >= 2  # the comparison is not between constant maps


def _write_validation_set(folder: Path, kind_files) -> None:
    """An imagefolder validation split of images of several sizes and kinds (EXIF-rotated, 16-bit, RGBA), with
    labels at each image's displayed size, some pixels ignored."""
    split = folder / "validation"
    split.mkdir(parents=True)
    rows = ["file_name,annotation_file_name"]
    rng = np.random.default_rng(5)
    big = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    Image.fromarray(big).save(split / "big.png")
    sources = [split / "big.png"]
    for name in ("exif_rotated", "gray16", "rgba", "rgb"):
        path, _ = kind_files[name]
        target = split / path.name
        target.write_bytes(path.read_bytes())
        sources.append(target)
    for index, source in enumerate(sources):
        height, width = decode_image(source).shape[:2]
        labels = rng.integers(0, 4, (height, width)).astype(np.uint8)
        labels[: height // 4] = 255
        Image.fromarray(labels).save(split / f"label_{index}.png")
        rows.append(f"{source.name},label_{index}.png")
    (split / "metadata.csv").write_text("\n".join(rows) + "\n")


def _brute_force_scores(model, processor, samples) -> dict[str, float]:
    """mIoU and pixel accuracy at the labels' resolution, from first principles (NumPy confusion matrix): each image
    alone through the processor and the model, its family's class scores at the input's size (`Family.class_scores`)
    resized bilinearly to the label's size."""
    confusion = np.zeros((4, 4), np.int64)
    class_scores = family_of(model).class_scores
    with torch.no_grad():
        for image, labels in samples:
            scores = class_scores(model(pixel_values=processor(image, return_tensors="pt")["pixel_values"]))
            prediction = F.interpolate(scores, size=labels.shape, mode="bilinear", align_corners=False)[0].argmax(0)
            valid = labels != 255
            np.add.at(confusion, (labels[valid], prediction.numpy()[valid]), 1)
    present = confusion.sum(1) > 0
    iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))
    return {"mean_iou": float(iou[present].mean()), "pixel_accuracy": float(np.trace(confusion) / confusion.sum())}


@pytest.mark.parametrize("name", PIXEL_CLASS_FAMILIES)
def test_trainer_evaluation_and_evaluate_command_give_identical_metrics(name, model_folders, kind_files, tmp_path):
    family, model_folder = FAMILIES[name], model_folders[name]
    data = tmp_path / "data"
    _write_validation_set(data, kind_files)
    output = tmp_path / "metrics.json"
    assert cli.evaluate_main(["--model", str(model_folder), "--dataset", str(data), "--output", str(output)]) == 0
    script = json.loads(output.read_text())  # the command's metrics

    model = family.auto_class.from_pretrained(model_folder).eval()
    processor = AutoImageProcessor.from_pretrained(model_folder)
    assert type(model) is family.head_class and type(processor) is type(processor_of(name))
    task = family.task
    split = load_segmentation_dataset(str(data), train_split=None)["validation"]
    dataset = task.make_dataset(split, task.label_spec(4), None, processor, random=False)
    sizes = {tuple(dataset[i]["pixel_values"].shape[1:]) for i in range(len(dataset))}
    assert len(sizes) > 1  # the batches below are padded
    trainer = FaPNTrainer(
        model=model,
        args=FaPNTrainingArguments(
            output_dir=str(tmp_path / "trainer"), per_device_eval_batch_size=3, report_to="none"
        ),
        eval_dataset=dataset,
        data_collator=task.eval_collator(255),
        processing_class=processor,
        compute_metrics=make_compute_metrics(task.make_metrics(4, 255, id2label=dict(enumerate(NAMES)))),
    )
    trained = trainer.evaluate()
    assert script["num_images"] == len(dataset) == 5
    for key in ("mean_iou", "pixel_accuracy", "mean_accuracy", "boundary_iou_3px", "boundary_mean_iou"):
        assert trained[f"eval_{key}"] == script[key], key
    for name in NAMES:
        value = script["per_class_iou"][name]
        assert trained[f"eval_iou_{name}"] == value or (np.isnan(value) and np.isnan(trained[f"eval_iou_{name}"]))
    # The library function on the model object and the Trainer's own data set, as the notebooks call it.
    library = evaluate(model, dataset, image_processor=processor)
    assert library["num_images"] == 5 and library["data"] is None
    for key in ("mean_iou", "pixel_accuracy", "mean_accuracy", "boundary_iou_3px", "boundary_mean_iou"):
        assert library[key] == script[key], key
    expected = _brute_force_scores(model, processor, dataset.samples())
    assert script["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-12)
    assert script["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-12)
    if family.eval_loss:  # a cross-entropy on the class scores, where they are logits
        assert np.isfinite(trained["eval_loss"])
    else:
        assert "eval_loss" not in trained
