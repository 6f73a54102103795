"""The detectors where a user meets them: transformers' pipelines on a saved folder (package classes and the folder's
own code), the `DetectionPredictor`, `fapn-predict`'s COCO results and drawings, and `fapn-export-onnx`'s refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image
from pycocotools import mask as mask_utils
from test_modeling_fapn_rcnn import tiny_rcnn_config
from transformers import pipeline

from fapn_hf import FaPNForSemanticSegmentation, FaPNImageProcessor
from fapn_hf.cli import commands as cli
from fapn_hf.inference.detection import (
    DetectionPredictor,
    coco_panoptic_annotation,
    load_predictor,
    panoptic_rgb,
)
from fapn_hf.inference.predictor import SegmentationPredictor
from fapn_hf.modeling.image_processing_fapn_rcnn import FaPNRCNNImageProcessor
from fapn_hf.modeling.modeling_fapn_rcnn import FaPNRCNNForObjectDetection
from fapn_hf.tasks.detection.visualization import draw_detections, draw_panoptic

ARCHITECTURES = ("faster_rcnn", "mask_rcnn", "panoptic_fpn")


def _image(seed: int = 0, size: tuple[int, int] = (48, 72)) -> np.ndarray:
    """A random RGB image with two flat rectangles (so that a random model's masks and stuff vary)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    image[5:30, 8:40] = (200, 30, 30)
    image[20:44, 35:70] = (30, 30, 220)
    return image


def _save_detector(folder: Path, architecture: str) -> Path:
    # A tiny random detector that scores every proposal (`tiny_rcnn_config`: box score threshold 0).
    torch.manual_seed(0)
    config = tiny_rcnn_config(architecture)
    model = FaPNRCNNForObjectDetection(config).eval()
    processor = FaPNRCNNImageProcessor(
        size={"shortest_edge": 64, "longest_edge": 96},
        channel_order="RGB",
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        meta_architecture=architecture,
        num_thing_labels=config.num_thing_labels,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("detectors")
    return {name: _save_detector(root / name, name) for name in ARCHITECTURES}


def _reference(folder: Path, image: np.ndarray):
    """The model's outputs and the processor of a folder, computed by hand (no pipeline)."""
    model = FaPNRCNNForObjectDetection.from_pretrained(folder).eval()
    processor = FaPNRCNNImageProcessor.from_pretrained(folder)
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    return outputs, processor


def test_object_detection_pipeline_equals_the_processors_post_processing(folders):
    image = _image()
    detector = pipeline("object-detection", model=str(folders["faster_rcnn"]))
    found = detector(Image.fromarray(image), threshold=0.0)
    outputs, processor = _reference(folders["faster_rcnn"], image)
    expected = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[image.shape[:2]])[0]
    assert len(found) == len(expected["scores"]) > 0
    names = detector.model.config.id2label
    for entry, score, label, box in zip(found, expected["scores"], expected["labels"], expected["boxes"]):
        assert entry["score"] == pytest.approx(float(score), abs=1e-4)
        assert entry["label"] == names[int(label)]
        # The pipeline rounds boxes to whole pixels.
        assert [entry["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] == [int(v) for v in box.tolist()]


@pytest.mark.slow
def test_object_detection_pipeline_with_the_folders_own_code(folders, tmp_path):
    """`trust_remote_code=True` in an interpreter that cannot import fapn_hf gives the package's detections."""
    image_path = tmp_path / "image.png"
    Image.fromarray(_image()).save(image_path)
    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
        assert importlib.util.find_spec("fapn_hf") is None, "fapn_hf is importable"
        from transformers import pipeline
        detector = pipeline("object-detection", model={str(folders["faster_rcnn"])!r}, trust_remote_code=True)
        assert type(detector.model).__module__.startswith("transformers_modules"), type(detector.model).__module__
        print(json.dumps(detector({str(image_path)!r}, threshold=0.0)))
        """
    )
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = json.loads(done.stdout.strip().splitlines()[-1])
    local = pipeline("object-detection", model=str(folders["faster_rcnn"]))(str(image_path), threshold=0.0)
    assert len(remote) == len(local) > 0
    for a, b in zip(remote, local):
        assert (a["label"], a["box"]) == (b["label"], b["box"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def _segmentation_pipeline(folder: Path, from_folder: bool):
    if from_folder:
        return pipeline("image-segmentation", model=str(folder))
    model = FaPNRCNNForObjectDetection.from_pretrained(folder).eval()
    return pipeline("image-segmentation", model=model, image_processor=FaPNRCNNImageProcessor.from_pretrained(folder))


@pytest.mark.parametrize(
    "from_folder",
    [False, True],
)
@pytest.mark.parametrize("architecture, subtask", [("mask_rcnn", "instance"), ("panoptic_fpn", "panoptic")])
def test_image_segmentation_pipeline_equals_the_processors_post_processing(folders, architecture, subtask, from_folder):
    image = _image(1)
    segmenter = _segmentation_pipeline(folders[architecture], from_folder)
    threshold = 0.3 if subtask == "instance" else 0.5
    found = segmenter(Image.fromarray(image), subtask=subtask, threshold=threshold)
    outputs, processor = _reference(folders[architecture], image)
    method = getattr(processor, f"post_process_{subtask}_segmentation")
    expected = method(outputs, threshold=threshold, target_sizes=[image.shape[:2]])[0]
    names = segmenter.model.config.id2label
    segmentation = expected["segmentation"].numpy()
    assert len(found) == len(expected["segments_info"]) > 0
    for entry, segment in zip(found, expected["segments_info"]):
        assert entry["label"] == names[segment["label_id"]]
        assert entry["score"] == pytest.approx(segment["score"], abs=1e-5)
        np.testing.assert_array_equal(np.asarray(entry["mask"]) > 0, segmentation == segment["id"])


@pytest.fixture(scope="module")
def predictions(folders) -> dict[str, object]:
    image = _image(2)
    return {name: (load_predictor(str(folder), device="cpu").predict(image), image) for name, folder in folders.items()}


def test_the_predictor_is_the_one_the_family_calls_for(folders, tmp_path):
    FaPNForSemanticSegmentation(tiny_config()).save_pretrained(tmp_path)
    FaPNImageProcessor(do_resize=False).save_pretrained(tmp_path)
    assert isinstance(load_predictor(str(folders["mask_rcnn"]), device="cpu"), DetectionPredictor)
    assert isinstance(load_predictor(str(tmp_path), device="cpu"), SegmentationPredictor)
    with pytest.raises(ValueError, match="no ONNX export"):
        load_predictor(str(folders["faster_rcnn"]), backend="onnxruntime")


def test_predictor_gives_the_processors_detections_masks_and_panoptic_map(folders, predictions):
    for name, (found, image) in predictions.items():
        outputs, processor = _reference(folders[name], image)
        size = [image.shape[:2]]
        boxes = processor.post_process_object_detection(outputs, threshold=-1.0, target_sizes=size)[0]
        assert len(found.scores) == len(boxes["scores"]) > 0, name
        np.testing.assert_allclose(found.boxes, boxes["boxes"].numpy(), atol=1e-4)
        np.testing.assert_allclose(found.scores, boxes["scores"].numpy(), atol=1e-6)
        np.testing.assert_array_equal(found.labels, boxes["labels"].numpy())
        assert (found.masks is not None) == (name != "faster_rcnn")
        if found.masks is not None:
            assert found.masks.shape == (len(found.scores), *image.shape[:2])
            instances = processor.post_process_instance_segmentation(outputs, threshold=-1.0, target_sizes=size)[0]
            # The instance map paints the best instance on top: each instance's visible pixels are its mask's.
            for segment in instances["segments_info"]:
                visible = instances["segmentation"].numpy() == segment["id"]
                assert found.masks[segment["id"]][visible].all()
        if name == "panoptic_fpn":
            panoptic = processor.post_process_panoptic_segmentation(outputs, target_sizes=size)[0]
            np.testing.assert_array_equal(found.panoptic[0], panoptic["segmentation"].numpy())
            assert found.panoptic[1] == panoptic["segments_info"]


def test_panoptic_png_and_annotation_follow_coco_panoptic():
    segmentation = np.zeros((4, 6), dtype=np.int32)
    segmentation[1:3, 2:5] = 1
    segmentation[3, :] = 300  # an id above 255 uses the green channel
    rgb = panoptic_rgb(segmentation)
    rgb = rgb.astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
    np.testing.assert_array_equal(ids, segmentation)
    segments = [
        {"id": 1, "label_id": 0, "was_fused": False, "score": 0.9},
        {"id": 300, "label_id": 4, "was_fused": False, "score": 0.7},
        {"id": 7, "label_id": 1, "was_fused": False, "score": 0.6},  # no pixel: left out
    ]
    annotation = coco_panoptic_annotation(segmentation, segments, 3, "x.png", num_thing_labels=3)
    assert annotation["image_id"] == 3 and annotation["file_name"] == "x.png"
    first, second = annotation["segments_info"]
    assert (first["area"], first["bbox"], first["isthing"], first["category_id"]) == (6, [2, 1, 3, 2], True, 0)
    assert (second["area"], second["bbox"], second["isthing"], second["category_id"]) == (6, [0, 3, 6, 1], False, 4)
    with pytest.raises(ValueError, match="segment ids"):
        panoptic_rgb(np.full((2, 2), -1))


def test_drawings_paint_masks_boxes_and_labels_above_the_threshold():
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    colors = np.array([[255, 0, 0], [0, 255, 0]], dtype=np.uint8)
    masks = np.zeros((2, 40, 60), dtype=bool)
    masks[0, 20:30, 30:50] = True
    masks[1, 2:8, 2:8] = True
    boxes = np.array([[28.0, 18.0, 52.0, 32.0], [1.0, 1.0, 9.0, 9.0]])
    drawn = np.asarray(draw_detections(image, boxes, [0, 1], [0.9, 0.2], ["a", "b"], colors, masks, threshold=0.5))
    assert drawn.shape == image.shape
    np.testing.assert_array_equal(drawn[25, 40], [178, 50, 50])  # mask blended at alpha 0.5, round(100*0.5+127.5)
    np.testing.assert_array_equal(drawn[31, 40], [255, 0, 0])  # the box outline
    np.testing.assert_array_equal(drawn[5, 5], [100, 100, 100])  # below the threshold: untouched
    np.testing.assert_array_equal(drawn[35:, :20], image[35:, :20])
    with pytest.raises(ValueError, match="labels must lie in"):
        draw_detections(image, boxes, [0, 2], [0.9, 0.9], ["a", "b"], colors)
    with pytest.raises(ValueError, match="masks must be"):
        draw_detections(image, boxes, [0, 1], [0.9, 0.9], ["a", "b"], colors, masks[:, :10])
    segmentation = np.zeros((40, 60), dtype=np.int32)
    segmentation[10:20, 10:30] = 2
    panel = np.asarray(draw_panoptic(image, segmentation, [{"id": 2, "label_id": 1}], ["a", "b"], colors))
    np.testing.assert_array_equal(panel[19, 29], [50, 178, 50])
    np.testing.assert_array_equal(panel[30, 40], [100, 100, 100])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_predict_command_writes_coco_results_and_drawings(folders, tmp_path, architecture, capsys):
    paths = []
    for index in range(2):
        paths.append(tmp_path / "images" / f"photo{index}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(_image(index + 3)).save(paths[-1])
    out = tmp_path / "out"
    argv = ["--model", str(folders[architecture]), "--output_dir", str(out), "--threshold", "0.2", "--device", "cpu"]
    assert cli.predict_main([*argv, *map(str, paths)]) == 0
    images = json.loads((out / "images.json").read_text())
    assert [entry["file_name"] for entry in images["images"]] == ["photo0.png", "photo1.png"]
    assert images["categories"][0] == {"id": 0, "name": "cat", "isthing": 1}
    predictor = load_predictor(str(folders[architecture]), device="cpu")
    for entry, path in zip(images["images"], paths):
        found = predictor.predict(path)
        assert (entry["height"], entry["width"]) == found.size
        drawing = Image.open(out / f"{path.stem}_detections.png")
        assert drawing.size == (found.size[1], found.size[0])
        if architecture == "panoptic_fpn":
            panoptic = json.loads((out / "panoptic.json").read_text())
            annotation = next(a for a in panoptic["annotations"] if a["image_id"] == entry["id"])
            ids = np.asarray(Image.open(out / "panoptic" / annotation["file_name"]), dtype=np.int64)
            ids = ids[..., 0] + 256 * ids[..., 1] + 256**2 * ids[..., 2]
            np.testing.assert_array_equal(ids, found.panoptic[0])
            assert [s["id"] for s in annotation["segments_info"]] == [
                s["id"] for s in found.panoptic[1] if (found.panoptic[0] == s["id"]).any()
            ]
            continue
        results = [r for r in json.loads((out / "results.json").read_text()) if r["image_id"] == entry["id"]]
        assert len(results) == len(found.scores) > 0
        for result, box, score, label, index in zip(
            results, found.boxes, found.scores, found.labels, range(len(results))
        ):
            x0, y0, x1, y1 = box.tolist()
            np.testing.assert_allclose(result["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=2e-3)
            assert result["score"] == pytest.approx(float(score), abs=1e-6)
            assert result["category_id"] == int(label)
            if found.masks is not None:
                rle = {**result["segmentation"], "counts": result["segmentation"]["counts"].encode()}
                np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), found.masks[index])
            else:
                assert "segmentation" not in result
    assert "wrote" in capsys.readouterr().out


def test_export_onnx_refuses_a_detector_saying_why(folders, capsys):
    with pytest.raises(SystemExit, match="variable number of detections") as raised:
        cli.export_onnx_main([str(folders["faster_rcnn"])])
    assert "fapn-predict" in str(raised.value) and "pipeline" in str(raised.value)
