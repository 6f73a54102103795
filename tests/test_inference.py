"""Test-time augmentation, sliding windows, and the evaluate / predict commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from PIL import Image
from transformers.modeling_outputs import SemanticSegmenterOutput

from fapn_hf import FaPNForSemanticSegmentation, FaPNImageProcessor
from fapn_hf.cli import commands as cli
from fapn_hf.inference.predictor import SegmentationPredictor, TTAConfig, sliding_window_logits

REPO_ROOT = Path(__file__).resolve().parents[1]


class PixelwiseModel(torch.nn.Module):
    """A 1x1 convolution: its output at a pixel depends only on that pixel, so windows must stitch exactly."""

    def __init__(self, num_labels: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, num_labels, 1)
        self.calls: list[tuple[int, int]] = []

    def forward(self, pixel_values: torch.Tensor) -> SemanticSegmenterOutput:
        self.calls.append(tuple(pixel_values.shape[-2:]))
        return SemanticSegmenterOutput(logits=self.conv(pixel_values))


@pytest.mark.parametrize("size, window", [((50, 70), (16, 24)), ((33, 20), (32, 32)), ((10, 10), (64, 64))])
def test_sliding_windows_stitch_exactly_and_cover_the_image(size, window):
    model = PixelwiseModel()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_logits(model, x, window, overlap=0.25), model(x).logits)
    assert all(h <= window[0] and w <= window[1] for h, w in model.calls[:-1])


def test_flip_and_multiscale_average_softmax_probabilities():
    model = FaPNForSemanticSegmentation(tiny_config()).eval()
    processor = FaPNImageProcessor(do_resize=False)
    predictor = SegmentationPredictor(model, processor)
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    expected = 0
    with torch.no_grad():
        for scale in (0.75, 1.0):
            # Every view is the processor's resize of the original image (antialiased, on uint8), not a resize of
            # normalised floats.
            size = {"height": round(40 * scale), "width": round(56 * scale)}
            scaled = processor(image, do_resize=True, size=size, return_tensors="pt")["pixel_values"]
            for flipped in (False, True):
                logits = model(scaled.flip(-1) if flipped else scaled).logits
                logits = logits.flip(-1) if flipped else logits
                logits = F.interpolate(logits, size=(40, 56), mode="bilinear", align_corners=False)
                expected = expected + logits.softmax(1)[0] / 4
    actual = predictor.predict_probabilities(image, TTAConfig(scales=(0.75, 1.0), flip=True))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert predictor.predict(image).shape == (40, 56)


def test_predictor_uses_the_processor_resize_and_returns_original_size():
    model = PixelwiseModel(4)
    model.config = type("Config", (), {"id2label": {i: str(i) for i in range(4)}})()
    processor = FaPNImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    predictor = SegmentationPredictor(model, processor)
    image = np.random.default_rng(1).integers(0, 255, (20, 100, 3), dtype=np.uint8)
    labels = predictor.predict(image, TTAConfig(scales=(0.5, 1.0)))
    # The processor's rule (longest edge capped) sets the base size; scale 0.5 halves it.
    assert labels.shape == (20, 100) and model.calls == [(6, 32), (13, 64)]
    model.calls.clear()
    single = predictor.predict(image)
    base = processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = F.interpolate(model(base).logits, size=(20, 100), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(single, expected[0].argmax(0).numpy())


def test_tta_arguments_are_checked():
    for scales in ((0.0,), (float("nan"),), (1.0, float("inf")), ()):
        with pytest.raises(ValueError, match="scales must be finite and positive"):
            TTAConfig(scales=scales)
    with pytest.raises(ValueError, match="window_overlap"):
        TTAConfig(window=(8, 8), window_overlap=1.0)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def demo_model_folder(tmp_path_factory):
    from fapn_hf.labels import label_maps
    from fapn_hf.tasks.semantic.demo_data import DEMO_LABELS

    folder = tmp_path_factory.mktemp("model")
    id2label, label2id = label_maps(list(DEMO_LABELS))
    FaPNForSemanticSegmentation(tiny_config(num_labels=6, id2label=id2label, label2id=label2id)).save_pretrained(folder)
    FaPNImageProcessor(do_resize=False).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_evaluate_command_reports_metrics_with_tta(demo_model_folder, tmp_path, capsys):
    output = tmp_path / "metrics.json"
    assert cli.evaluate_main([
        "--model", str(demo_model_folder), "--dataset", "demo", "--max_samples", "3", "--scales", "0.75", "1.0",
        "--flip", "--window", "48", "48", "--output", str(output),
    ]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "mean_iou" in printed and "boundary_mean_iou" in printed and "scales [0.75, 1.0], flip True" in printed
    metrics = json.loads(output.read_text())
    assert metrics["num_images"] == 3 and 0 <= metrics["mean_iou"] <= 1
    assert metrics["tta"] == {"scales": [0.75, 1.0], "flip": True, "window": [48, 48]}
    assert set(metrics["per_class_iou"]) == {"background", "blob", "box", "wire", "dot", "shard"}


def test_evaluate_command_accepts_dashed_flags_and_names_bad_values(demo_model_folder, tmp_path):
    """HfArgumentParser's dashed aliases (`--max-samples`) parse to the same arguments; a bad value ends the command
    with `error: ...` naming it, not a traceback."""
    dashed = cli.parse_arguments(
        cli.EvaluateArguments, ["--model", "m", "--max-samples", "2", "--reduce-labels"], "x", ""
    )
    underscored = cli.parse_arguments(
        cli.EvaluateArguments, ["--model", "m", "--max_samples", "2", "--reduce_labels"], "x", ""
    )
    assert dashed == underscored and dashed.max_samples == 2 and dashed.reduce_labels is True
    with pytest.raises(SystemExit, match=r"error: scales must be finite and positive, got \(1.0, -0.5\)"):
        cli.evaluate_main(["--model", str(demo_model_folder), "--scales", "1.0", "-0.5"])
    with pytest.raises(SystemExit, match=r"error: --window takes height and width .*, got \[48, 48, 48\]"):
        cli.evaluate_main(["--model", str(demo_model_folder), "--window", "48", "48", "48"])
    with pytest.raises(SystemExit, match=r"error: give either scales \(0.5,\) or short_sides \(320,\), not both"):
        cli.evaluate_main(["--model", str(demo_model_folder), "--scales", "0.5", "--short_sides", "320"])


def test_boolean_flags_take_a_value_only_when_it_is_a_boolean_word():
    argv = ["--model", "m", "--flip", "a.jpg", "b.png", "--overwrite", "false", "--trust-remote-code"]
    parsed = cli.parse_arguments(cli.PredictArguments, argv, "fapn-predict", "")
    assert parsed.flip is True and parsed.overwrite is False and parsed.trust_remote_code is True
    assert parsed.images == [Path("a.jpg"), Path("b.png")]
    parsed = cli.parse_arguments(cli.PredictArguments, ["--model", "m", "--flip", "--", "true"], "fapn-predict", "")
    assert parsed.flip is True and parsed.images == [Path("true")]


@pytest.mark.slow
def test_predict_command_runs_as_an_installed_command(demo_model_folder, tmp_path):
    """`python -m fapn_hf predict` in a fresh process, as the `fapn-predict` console script runs it."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 45, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    Image.fromarray(rng.integers(0, 255, (25, 20), dtype=np.uint8)).save(tmp_path / "gray.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = _run([
        "-m", "fapn_hf", "predict", "--model", str(demo_model_folder), "--output-dir", str(out),
        "--flip", str(tmp_path / "photo.jpg"), str(tmp_path / "gray.png"), str(tmp_path / "broken.png"),
    ])  # fmt: skip
    assert "skipped" in result.stderr and "broken.png" in result.stderr
    labels = Image.open(out / "photo_labels.png")
    assert labels.mode == "P" and labels.size == (45, 30) and np.array(labels).max() < 6
    assert Image.open(out / "gray_overlay.png").size == (20, 25)


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "m", "--window", "512", "512", "a.jpg", "b.png"],
        ["--model", "m", "a.jpg", "b.png", "--window", "512", "512"],
        ["--model", "m", "--scales", "0.5", "1", "a.jpg", "--window", "512", "512", "b.png"],
        ["--window", "512", "512", "--model", "m", "--", "a.jpg", "b.png"],
        ["--model", "m", "--window", "512", "512", "a.jpg", "--", "b.png"],
    ],
)
def test_images_may_follow_a_list_of_numbers(argv):
    """A list-valued flag ends at its first word that is not a number: the images after `--window 512 512` are
    images, wherever they stand (it once read them as window sides: "invalid int value: 'a.jpg'")."""
    args = cli.parse_arguments(cli.PredictArguments, argv, "fapn-predict", "")
    assert [str(path) for path in args.images] == ["a.jpg", "b.png"] and args.model == "m"
    assert args.window == [512, 512] and args.scales in ([1.0], [0.5, 1.0])


def test_a_number_list_still_refuses_a_bad_number():
    with pytest.raises(SystemExit):
        cli.parse_arguments(cli.PredictArguments, ["--model", "m", "--scales", "-", "a.jpg"], "fapn-predict", "")


def test_bfloat16_precision_runs_the_forward_pass_under_autocast(monkeypatch):
    """precision="bfloat16": the model's forward pass under bf16 autocast (the scores it returns are bf16, then
    float32 again before resizing), equal to doing it by hand; "auto" follows the CPU's native bf16; others refused."""
    torch.manual_seed(0)
    model = FaPNForSemanticSegmentation(tiny_config()).eval()
    processor = FaPNImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    image = np.random.default_rng(2).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    predictor = SegmentationPredictor(model, processor, precision="bfloat16")
    scores = predictor.predict_probabilities(image)
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        logits = model(pixel_values=pixel_values).logits
    assert logits.dtype == torch.bfloat16
    expected = F.interpolate(logits.float(), size=(40, 60), mode="bilinear", align_corners=False).softmax(1)[0]
    torch.testing.assert_close(scores, expected)
    float32 = SegmentationPredictor(model, processor).predict_probabilities(image)
    assert not torch.equal(scores, float32) and (scores - float32).abs().max() < 0.25  # bf16: 8 bits of mantissa

    import fapn_hf.inference.predictor as predictor_module

    for fast, resolved in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(predictor_module, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert SegmentationPredictor(model, processor, precision="auto").precision == resolved
    with pytest.raises(ValueError, match=r"precision must be one of \('float32', 'bfloat16', 'auto'\), got 'fp16'"):
        SegmentationPredictor(model, processor, precision="fp16")
