"""Inputs as people have them, in one table: each case and the outcome it must have.

Outcomes: "ok" (the call succeeds and its checks hold), "error" (a clear error: the message matches the pattern and
is raised by fapn_hf or its commands, not from inside torch / PIL / datasets), "warning" (the call succeeds and warns
with a message matching the pattern). The categories are those of the issue "One image path and one evaluation path":
image kinds and bit depths, transparency and animation, wrong shapes and types, model inputs, configs, test-time
augmentation, model and data sources, splits, labels, training folders and checkpoints, and fapn-predict's outputs.
"""

from __future__ import annotations

import json
import re
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_config
from datasets import Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image
from safetensors.torch import save_file
from transformers import TimmBackboneConfig
from transformers.modeling_outputs import SemanticSegmenterOutput

from fapn_hf import (
    FaPNConfig,
    FaPNForSemanticSegmentation,
    FaPNImageProcessor,
    SegmentationPredictor,
    TTAConfig,
    decode_image,
)
from fapn_hf.cli import commands as cli
from fapn_hf.labels import label_maps
from fapn_hf.tasks.semantic.data import LabelSpec, check_samples, decode_sample, load_segmentation_dataset
from fapn_hf.training.args import DataArguments, FaPNTrainingArguments, ModelArguments, load_recipe
from fapn_hf.training.builders import build_model
from fapn_hf.training.run import run_training

REPO_ROOT = Path(__file__).resolve().parents[1]
NAMES = ["background", "blob", "box", "wire"]
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)
GRAY = RGB[..., 0].copy()
ALPHA = RNG.choice(np.array([0, 100, 255], np.uint8), (12, 16))
U16 = RNG.integers(0, 65536, (12, 16), dtype=np.uint16)
WHITE = np.full((12, 16, 3), 255, np.uint8)


def gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


@dataclass
class Context:
    tmp: Path
    model: FaPNForSemanticSegmentation
    processor: FaPNImageProcessor
    predictor: SegmentationPredictor
    folder: Path  # the model saved as <tmp>/outputs/demo

    def path(self, name: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Case:
    name: str
    run: Callable[[Context], Any]
    expect: str  # "ok", "error" or "warning"
    pattern: str = ""
    origin: str = "fapn_hf"  # who raises the error: fapn_hf (its commands included), or a library named here


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Context:
    tmp = tmp_path_factory.mktemp("inputs")
    id2label, label2id = label_maps(NAMES)
    model = FaPNForSemanticSegmentation(tiny_config(id2label=id2label, label2id=label2id)).eval()
    processor = FaPNImageProcessor(do_resize=False)
    folder = tmp / "outputs" / "demo"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return Context(tmp, model, processor, SegmentationPredictor(model, processor), folder)


# ------------------------------------------------------------------------------------------------------- helpers


def same(image: Any, expected: np.ndarray) -> Callable[[Context], None]:
    """The image decodes to `expected`, and the processor makes the same pixel_values from both."""

    def run(c: Context) -> None:
        np.testing.assert_array_equal(decode_image(image), expected)
        pixels = c.processor(image, return_tensors="pt")["pixel_values"]
        assert torch.equal(pixels, c.processor(expected, return_tensors="pt")["pixel_values"])

    return run


def saved(c: Context, name: str, image: Image.Image, **save_options: Any) -> Path:
    path = c.path(f"files/{name}")
    image.save(path, **save_options)
    return path


def exif_image(orientation: int) -> Image.Image:
    image = Image.fromarray(RGB)
    image.getexif()[0x0112] = orientation
    return image


def rotated_jpeg(c: Context) -> Path:
    image = Image.fromarray(RGB)
    exif = image.getexif()
    exif[0x0112] = 6
    return saved(c, "phone.jpg", image, quality=95, exif=exif)


def animated_gif(c: Context) -> Path:
    frames = [Image.fromarray(np.full((12, 16, 3), value, np.uint8)) for value in (40, 200)]
    return saved(c, "animated.gif", frames[0], save_all=True, append_images=frames[1:])


def bytes_file(c: Context, name: str, content: bytes) -> Path:
    path = c.path(f"files/{name}")
    path.write_bytes(content)
    return path


def truncated_png(c: Context) -> Path:
    whole = saved(c, "whole.png", Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    return bytes_file(c, "truncated.png", whole.read_bytes()[:300])


def palette_with_transparency() -> tuple[Image.Image, np.ndarray]:
    indices = RNG.integers(0, 3, (12, 16), dtype=np.uint8)
    colours = np.array([[10, 20, 30], [200, 100, 50], [0, 255, 0]], np.uint8)
    image = Image.frombytes("P", (16, 12), indices.tobytes())
    image.putpalette(colours.flatten().tolist())
    image.info["transparency"] = 1
    expected = colours[indices]
    expected[indices == 1] = 255
    return image, expected


def forward(c: Context, pixel_values: Any, labels: Any = None, model: torch.nn.Module | None = None):
    with torch.no_grad():
        return (model or c.model)(pixel_values=pixel_values, labels=labels)


def all_ignored_loss_is_zero_without_gradient(c: Context) -> None:
    model = FaPNForSemanticSegmentation(tiny_config()).train()
    output = model(torch.randn(2, 3, 32, 32), labels=torch.full((2, 32, 32), 255))
    assert output.loss.item() == 0.0
    output.loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def point_rend_loss(labelled: int) -> Callable[[Context], None]:
    def run(c: Context) -> None:
        model = FaPNForSemanticSegmentation(tiny_config(use_point_rend=True)).train()
        labels = torch.full((2, 32, 32), 255)
        labels.view(-1)[:labelled] = 1
        loss = model(torch.randn(2, 3, 32, 32), labels=labels).loss
        assert torch.isfinite(loss) and (loss.item() > 0 if labelled else loss.item() == 0.0)

    return run


def batch_norm_neck_batch_of_one(c: Context) -> None:
    model = FaPNForSemanticSegmentation(tiny_config(neck_norm="BN", neck_channels=64)).train()
    model(torch.randn(1, 3, 32, 32))


def backbone_at_wrong_strides(c: Context) -> None:
    config = tiny_config(
        backbone=None, backbone_config=TimmBackboneConfig(backbone="resnet18", out_indices=(0, 1, 2, 3))
    )
    forward(c, torch.randn(1, 3, 64, 64), model=FaPNForSemanticSegmentation(config).eval())


def misspelt_key_in_config_json(c: Context) -> None:
    folder = c.path("misspelt-config")
    FaPNConfig(backbone="resnet18", num_labels=4).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["neck_chanels"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    FaPNConfig.from_pretrained(folder)


def misspelt_recipe_key(c: Context) -> None:
    recipe = c.path("recipes/typo.yaml")
    recipe.write_text("preset: fapn-r18\nlearning_rat: 0.01\n")
    load_recipe(recipe)


def target_sizes_for_another_batch(c: Context) -> None:
    c.processor.post_process_semantic_segmentation(
        SemanticSegmenterOutput(logits=torch.randn(2, 4, 8, 8)), target_sizes=[(8, 8)]
    )


def model_file(c: Context) -> str:
    path = c.path("files/model.safetensors")
    save_file({"x": torch.zeros(1)}, path)
    return str(path)


def evaluate_script(*argv: str) -> Callable[[Context], None]:
    def run(c: Context) -> None:
        cli.evaluate_main([*(arg.format(model=c.folder) for arg in argv)])

    return run


# ---------------------------------------------------------------------------------------------------------- data


def imagefolder(c: Context, name: str, samples: list[tuple[np.ndarray, np.ndarray]], header: str) -> Path:
    """An imagefolder `validation` split of (image, label) samples; the CSV's second column is named `header`."""
    folder = c.path(f"data/{name}/validation")
    folder.mkdir(parents=True, exist_ok=True)
    rows = [f"file_name,{header}"]
    for index, (image, label) in enumerate(samples):
        Image.fromarray(image).save(folder / f"image_{index}.png")
        Image.fromarray(label).save(folder / f"label_{index}.png")
        rows.append(f"image_{index}.png,label_{index}.png")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return folder.parent


def sample(labels: tuple[int, ...] = (0, 1, 2), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (10, 14, 3), dtype=np.uint8), rng.choice(labels, (10, 14)).astype(np.uint8)


def demo(**options: Any):
    return load_segmentation_dataset(
        "demo", demo_options={"num_train": 4, "num_validation": 2, "size": (16, 16)}, **options
    )


def carved_only_when_asked(c: Context) -> None:
    splits = demo(validation_fraction=0.5)
    assert (len(splits["train"]), len(splits["validation"])) == (2, 2)
    assert len(demo()["validation"]) == 2  # the source's own split otherwise


def metadata_with_a_file_name_column(c: Context) -> None:
    data = imagefolder(c, "seg-column", [sample()], "seg_file_name")
    row = load_segmentation_dataset(str(data), train_split=None)["validation"][0]
    assert row["label"]["path"].endswith("label_0.png")


def raw_cityscapes_ids(c: Context) -> None:
    data = imagefolder(c, "cityscapes-raw", [sample(labels=(7, 26, 0))], "annotation_file_name")
    check_samples(load_segmentation_dataset(str(data), train_split=None)["validation"], LabelSpec(19))


def parquet_copy(c: Context) -> None:
    folder = c.path("data/parquet-copy/data")
    folder.mkdir(parents=True, exist_ok=True)
    features = Features({"image": ImageFeature(), "annotation": ImageFeature()})
    for split, count in (("train", 3), ("validation", 2)):
        images, labels = zip(*(sample(seed=i) for i in range(count)))
        Dataset.from_dict(
            {"image": [Image.fromarray(i) for i in images], "annotation": [Image.fromarray(x) for x in labels]},
            features=features,
        ).to_parquet(folder / f"{split}-00000-of-00001.parquet")
    splits = load_segmentation_dataset(str(folder.parent), label_column="annotation")
    assert (len(splits["train"]), len(splits["validation"])) == (3, 2)
    decode_sample(splits["validation"][1], 1, LabelSpec(3))


def all_samples_unusable(c: Context) -> None:
    data = imagefolder(c, "all-bad", [sample(labels=(0, 9)), sample(labels=(5,))], "annotation_file_name")
    check_samples(
        load_segmentation_dataset(str(data), train_split=None)["validation"], LabelSpec(3), "skip", "validation"
    )


def all_labels_ignored(c: Context) -> None:
    data = imagefolder(c, "all-ignored", [sample(labels=(255,))], "annotation_file_name")
    check_samples(
        load_segmentation_dataset(str(data), train_split=None)["validation"], LabelSpec(3), "fail", "validation"
    )


def row(image: Path, label: Path) -> dict:
    return {"image": {"path": str(image), "bytes": None}, "label": {"path": str(label), "bytes": None}}


def sixteen_bit_training_image(c: Context) -> None:
    image = saved(c, "train16.png", Image.fromarray(U16))
    label = saved(c, "train16_label.png", Image.fromarray(np.zeros((12, 16), np.uint8)))
    rgb, _ = decode_sample(row(image, label), 0, LabelSpec(3))
    np.testing.assert_array_equal(rgb, gray3(np.rint(U16 / 257).astype(np.uint8)))
    assert rgb.min() < 50 and rgb.max() > 200  # not saturated


def exif_label(size: tuple[int, int]) -> Callable[[Context], None]:
    def run(c: Context) -> None:
        label = saved(c, f"label_{size[0]}x{size[1]}.png", Image.fromarray(np.ones(size, np.uint8)))
        image, labels = decode_sample(row(rotated_jpeg(c), label), 0, LabelSpec(3))
        assert image.shape[:2] == labels.shape == (16, 12)

    return run


# ------------------------------------------------------------------------------------------------------ training


def training_arguments(c: Context, output_dir: Path, **training: Any):
    return (
        ModelArguments(preset="fapn-r18", neck_channels=32, head_channels=64, deformable_groups=4),
        DataArguments(demo_train_samples=2, demo_validation_samples=1, demo_size=32, crop_size=[32, 32]),
        FaPNTrainingArguments(output_dir=str(output_dir), report_to="none", **training),
    )


def non_empty_output_dir(c: Context) -> None:
    output_dir = c.path("runs/used")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "model.safetensors").write_bytes(b"an earlier run")
    run_training(*training_arguments(c, output_dir))


def write_checkpoint(folder: Path, step: int, complete: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"weight": torch.zeros(64)}, folder / "model.safetensors")
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    else:  # killed while writing: the weights cut short, the trainer state never written
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def resume_after_a_kill(c: Context) -> None:
    output_dir = c.path("runs/killed")
    write_checkpoint(output_dir / "checkpoint-3", 3, complete=True)
    write_checkpoint(output_dir / "checkpoint-6", 6, complete=False)
    run_training(*training_arguments(c, output_dir, resume_from_checkpoint="last"))


def resume_without_checkpoints(c: Context) -> None:
    run_training(*training_arguments(c, c.path("runs/fresh"), resume_from_checkpoint="last"))


def fine_tune_with(**options: Any) -> Callable[[Context], None]:
    def run(c: Context) -> None:
        build_model(ModelArguments(model_name_or_path=str(c.folder), **options), NAMES)

    return run


def fine_tune_mistyped(c: Context) -> None:
    build_model(ModelArguments(model_name_or_path=str(c.tmp / "outputs" / "dmeo")), NAMES)


# ------------------------------------------------------------------------------------------------------- predict


def predict(c: Context, model: Path, output: Path, *images: Path, overwrite: bool = False) -> None:
    argv = ["--model", str(model), "--output_dir", str(output), *map(str, images)]
    assert cli.predict_main(argv + (["--overwrite"] if overwrite else [])) == 0


def more_than_256_classes(c: Context) -> None:
    names = [f"class {i}" for i in range(300)]
    id2label, label2id = label_maps(names)
    folder = c.path("models/300-classes")
    FaPNForSemanticSegmentation(
        tiny_config(num_labels=300, id2label=id2label, label2id=label2id, semantic_loss_ignore_index=-1)
    ).save_pretrained(folder)
    c.processor.save_pretrained(folder)
    image = saved(c, "for-300.png", Image.fromarray(RGB))
    predict(c, folder, c.path("predictions/300"), image)
    written = Image.open(c.tmp / "predictions/300/for-300_labels.png")
    assert written.mode.startswith("I") and np.array(written).max() < 300


def same_stems(c: Context) -> None:
    inputs = [
        saved(c, f"{folder}/photo{suffix}", Image.fromarray(RGB))
        for folder, suffix in (("a", ".png"), ("b", ".png"), ("a", ".jpg"))
    ]
    output = c.path("predictions/stems")
    predict(c, c.folder, output, *inputs)
    labels = sorted(str(p.relative_to(output)) for p in output.rglob("*_labels.png"))
    assert labels == ["a/photo_jpg_labels.png", "a/photo_png_labels.png", "b/photo_labels.png"]


def existing_outputs_kept(c: Context, capsys=None) -> None:
    image = saved(c, "keep/photo.png", Image.fromarray(RGB))
    output = c.path("predictions/keep")
    output.mkdir(parents=True, exist_ok=True)
    (output / "photo_labels.png").write_bytes(b"precious")
    predict(c, c.folder, output, image)
    assert (output / "photo_labels.png").read_bytes() == b"precious"
    predict(c, c.folder, output, image, overwrite=True)
    assert Image.open(output / "photo_labels.png").size == (16, 12)


# --------------------------------------------------------------------------------------------------------- table

F32 = (RGB / 255).astype(np.float32)
CHW = torch.from_numpy(RGB).permute(2, 0, 1)
BF16 = CHW.to(torch.bfloat16) / 255
PALETTE_T, PALETTE_T_EXPECTED = palette_with_transparency()

CASES = [
    # Images: kinds, bit depths, transparency, orientation.
    Case("uint8 RGB array", same(RGB, RGB), "ok"),
    Case("uint8 gray (H, W)", same(GRAY, gray3(GRAY)), "ok"),
    Case("uint8 gray (H, W, 1)", same(GRAY[..., None], gray3(GRAY)), "ok"),
    Case("uint8 gray + alpha (H, W, 2)", same(np.dstack([GRAY, ALPHA]), over_white(gray3(GRAY), ALPHA)), "ok"),
    Case("uint8 RGBA: transparent pixels stay hidden", same(np.dstack([RGB, ALPHA]), over_white(RGB, ALPHA)), "ok"),
    Case("uint8 RGBA fully transparent is white", same(np.dstack([RGB, 0 * GRAY]), WHITE), "ok"),
    Case("uint16 array, 8-bit data times 257", same(RGB.astype(np.uint16) * 257, RGB), "ok"),
    Case("uint16 array, full range", same(U16, gray3(np.rint(U16 / 257).astype(np.uint8))), "ok"),
    Case("float32 [0, 1] array", same(F32, RGB), "ok"),
    Case("float64 [0, 1] array", same(RGB / 255, RGB), "ok"),
    Case("float [0, 1] with rounding noise above 1", same(np.minimum(F32 * 1.0000001, 1.0000001), RGB), "ok"),
    Case("float16 tensor (C, H, W)", same(CHW.half() / 255, RGB), "ok"),
    Case("bfloat16 tensor", same(BF16, np.rint(BF16.float().permute(1, 2, 0).numpy() * 255).astype(np.uint8)), "ok"),
    Case("uint8 tensor (3, H, W)", same(CHW, RGB), "ok"),
    Case("uint8 tensor (1, H, W)", same(torch.from_numpy(GRAY)[None], gray3(GRAY)), "ok"),
    Case("uint8 tensor (H, W)", same(torch.from_numpy(GRAY), gray3(GRAY)), "ok"),
    Case(
        "uint8 tensor (4, H, W)",
        same(torch.from_numpy(np.dstack([RGB, ALPHA])).permute(2, 0, 1), over_white(RGB, ALPHA)),
        "ok",
    ),
    Case(
        "1x1 image through the predictor",
        lambda c: c.predictor.predict(np.zeros((1, 1, 3), np.uint8)).shape == (1, 1),
        "ok",
    ),
    Case(
        "PIL bilevel (mode 1)",
        same(Image.fromarray(GRAY > 127), gray3(np.where(GRAY > 127, 255, 0).astype(np.uint8))),
        "ok",
    ),
    Case(
        "PIL CMYK",
        same(Image.fromarray(RGB).convert("CMYK"), np.asarray(Image.fromarray(RGB).convert("CMYK").convert("RGB"))),
        "ok",
    ),
    Case(
        "PIL HSV",
        same(Image.fromarray(RGB).convert("HSV"), np.asarray(Image.fromarray(RGB).convert("HSV").convert("RGB"))),
        "ok",
    ),
    Case("PIL I;16", same(Image.fromarray(U16), gray3(np.rint(U16 / 257).astype(np.uint8))), "ok"),
    Case(
        "PIL I;16B (big-endian 16-bit)",
        same(
            Image.frombytes("I;16B", (16, 12), U16.astype(">u2").tobytes()), gray3(np.rint(U16 / 257).astype(np.uint8))
        ),
        "ok",
    ),
    Case(
        "PIL I holding 16-bit values",
        same(Image.fromarray(U16.astype(np.int32)), gray3(np.rint(U16 / 257).astype(np.uint8))),
        "ok",
    ),
    Case("PIL F in [0, 1]", same(Image.fromarray(F32[..., 0]), gray3(RGB[..., 0])), "ok"),
    Case("PIL palette with a transparent entry", same(PALETTE_T, PALETTE_T_EXPECTED), "ok"),
    Case("PIL LA", same(Image.fromarray(np.dstack([GRAY, ALPHA])), over_white(gray3(GRAY), ALPHA)), "ok"),
    Case("PIL RGBA", same(Image.fromarray(np.dstack([RGB, ALPHA])), over_white(RGB, ALPHA)), "ok"),
    Case("PIL image with EXIF orientation 8", same(exif_image(8), np.ascontiguousarray(np.rot90(RGB))), "ok"),
    Case(
        "JPEG file with EXIF orientation 6, as a str",
        lambda c: decode_image(str(rotated_jpeg(c))).shape == (16, 12, 3),
        "ok",
    ),
    Case(
        "JPEG file with EXIF orientation 6, as a Path, predicted upright",
        lambda c: c.predictor.predict(rotated_jpeg(c)).shape == (16, 12),
        "ok",
    ),
    Case(
        "16-bit PNG file through the predictor",
        lambda c: c.predictor.predict(saved(c, "g16.png", Image.fromarray(U16))),
        "ok",
    ),
    # Images that cannot be read right: refused with the reason.
    Case(
        "int64 array (NumPy's default integers)",
        lambda c: decode_image(RNG.integers(0, 255, (4, 4, 3))),
        "error",
        r"int64 pixels have no defined value range.*uint8",
    ),
    Case(
        "int64 tensor (torch.randint's default)",
        lambda c: c.processor(torch.randint(0, 255, (3, 4, 4))),
        "error",
        r"int64 pixels have no defined value range",
    ),
    Case("int32 tensor", lambda c: decode_image(torch.zeros(3, 4, 4, dtype=torch.int32)), "error", r"int32 pixels"),
    Case("boolean mask as an image", lambda c: decode_image(np.ones((4, 4), bool)), "error", r"boolean pixels"),
    Case("complex array", lambda c: decode_image(np.ones((4, 4, 3), np.complex64)), "error", r"complex64 pixels"),
    Case(
        "float array in 0..255",
        lambda c: c.predictor.predict(RGB.astype(np.float32)),
        "error",
        r"taken as \[0, 1\], but these span \[0, 25\d\]; divide 0\.\.255 data by 255",
    ),
    Case("float array with NaN", lambda c: decode_image(np.full((4, 4), np.nan)), "error", r"NaN or infinite"),
    Case("float array with infinity", lambda c: decode_image(np.full((4, 4), np.inf)), "error", r"NaN or infinite"),
    Case("negative floats", lambda c: decode_image(np.full((4, 4), -0.2)), "error", r"taken as \[0, 1\]"),
    Case(
        "PIL I outside 16 bits",
        lambda c: decode_image(Image.fromarray(np.full((4, 4), -5, np.int32))),
        "error",
        r"taken as 16-bit.*\[-5, -5\], outside \[0, 65535\]",
    ),
    Case(
        "PIL F outside [0, 1]",
        lambda c: decode_image(Image.fromarray(np.full((4, 4), 3.5, np.float32))),
        "error",
        r"taken as \[0, 1\]",
    ),
    Case(
        "5 channels",
        lambda c: c.processor(np.zeros((6, 6, 5), np.uint8)),
        "error",
        r"must have 1 \(gray\), 2 \(gray \+ alpha\), 3 \(RGB\) or 4 \(RGBA\) channels on its first or last axis, "
        r"got shape \(6, 6, 5\)",
    ),
    Case(
        "tensor with 5 channels",
        lambda c: decode_image(torch.zeros(5, 4, 4)),
        "error",
        r"channels-first \(C, H, W\).*got shape \(5, 4, 4\)",
    ),
    Case(
        "0x5 image", lambda c: c.predictor.predict(np.zeros((0, 5, 3), np.uint8)), "error", r"is empty \(0x5 pixels\)"
    ),
    Case("5x0 gray image", lambda c: decode_image(np.zeros((5, 0), np.uint8)), "error", r"is empty \(5x0 pixels\)"),
    Case("3x0x4 tensor", lambda c: decode_image(torch.zeros(3, 0, 4)), "error", r"is empty \(0x4 pixels\)"),
    Case(
        "4-D array as one image",
        lambda c: decode_image(np.zeros((2, 4, 4, 3), np.uint8)),
        "error",
        r"must be \(H, W\) or have a channel axis",
    ),
    Case("nested list as an image", lambda c: decode_image([[0, 1], [2, 3]]), "error", r"expected an image.*got list"),
    Case("None as an image", lambda c: c.predictor.predict(None), "error", r"got NoneType"),
    Case(
        "missing file",
        lambda c: c.predictor.predict(c.tmp / "nowhere.jpg"),
        "error",
        r"image file not found: .*nowhere\.jpg",
    ),
    Case("folder as an image", lambda c: decode_image(c.tmp), "error", r"is a folder, not an image file"),
    Case(
        "zero-byte file",
        lambda c: decode_image(bytes_file(c, "empty.jpg", b"")),
        "error",
        r"empty\.jpg is not an image that can be read",
    ),
    Case(
        "text file named .jpg",
        lambda c: decode_image(bytes_file(c, "notes.jpg", b"shopping list")),
        "error",
        r"notes\.jpg is not an image that can be read",
    ),
    Case(
        "truncated PNG",
        lambda c: decode_image(truncated_png(c)),
        "error",
        r"truncated\.png is not an image that can be read",
    ),
    Case("empty list to the processor", lambda c: c.processor([]), "error", r"empty batch"),
    Case(
        "empty (0, H, W, 3) batch to the processor",
        lambda c: c.processor(np.zeros((0, 4, 4, 3), np.uint8)),
        "error",
        r"empty batch",
    ),
    # Animation: the first frame, said so.
    Case(
        "animated GIF file",
        lambda c: decode_image(animated_gif(c)),
        "warning",
        r"animated\.gif is animated \(2 frames\): FaPN segments its first frame",
    ),
    Case(
        "animated PIL image to the processor",
        lambda c: c.processor(Image.open(animated_gif(c))),
        "warning",
        r"animated \(2 frames\).*first frame",
    ),
    # Model inputs and labels.
    Case(
        "uint8 pixel_values",
        lambda c: forward(c, torch.zeros(1, 3, 32, 32, dtype=torch.uint8)),
        "error",
        r"pixel_values must be normalised floats, got dtype torch\.uint8",
    ),
    Case("1-channel pixel_values", lambda c: forward(c, torch.zeros(1, 1, 32, 32)), "error", r"must have 3 channels"),
    Case(
        "empty batch of pixel_values",
        lambda c: forward(c, torch.zeros(0, 3, 32, 32)),
        "error",
        r"pixel_values is empty: shape \(0, 3, 32, 32\)",
    ),
    Case("0-high pixel_values", lambda c: forward(c, torch.zeros(1, 3, 0, 32)), "error", r"pixel_values is empty"),
    Case(
        "3-D pixel_values",
        lambda c: forward(c, torch.zeros(3, 32, 32)),
        "error",
        r"must be \(batch, channels, height, width\)",
    ),
    Case(
        "NumPy pixel_values",
        lambda c: forward(c, np.zeros((1, 3, 32, 32), np.float32)),
        "error",
        r"must be a torch\.Tensor",
    ),
    Case(
        "NumPy labels",
        lambda c: forward(c, torch.zeros(1, 3, 32, 32), np.zeros((1, 32, 32), np.int64)),
        "error",
        r"labels must be a torch\.Tensor.*ndarray",
    ),
    Case(
        "list labels",
        lambda c: forward(c, torch.zeros(1, 3, 2, 2), [[[0, 1], [1, 0]]]),
        "error",
        r"labels must be a torch\.Tensor.*list",
    ),
    Case(
        "float labels",
        lambda c: forward(c, torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8)),
        "error",
        r"integer class ids",
    ),
    Case(
        "labels outside the label map",
        lambda c: forward(c, torch.zeros(1, 3, 8, 8), torch.full((1, 8, 8), 9)),
        "error",
        r"\[9\].*outside the label map",
    ),
    Case("all labels ignored: loss 0, no gradient", all_ignored_loss_is_zero_without_gradient, "ok"),
    Case("PointRend with one labelled pixel", point_rend_loss(1), "ok"),
    Case("PointRend without a labelled pixel", point_rend_loss(0), "ok"),
    Case(
        "BatchNorm neck, one image per batch in training",
        batch_norm_neck_batch_of_one,
        "error",
        r"BatchNorm layer saw one value per channel.*batch of 1 image.*at least 2 images",
    ),
    Case("backbone at strides 2..16", backbone_at_wrong_strides, "error", r"strides 4, 8, 16, 32.*out_indices"),
    Case(
        "timm backbone without a stride-32 map",
        lambda c: FaPNConfig(backbone="vit_tiny_patch16_224"),
        "error",
        r"feature strides \[16, 16, 16\]; FaPN needs maps at strides",
    ),
    # Configs.
    Case(
        "neck_channels='256'",
        lambda c: tiny_config(neck_channels="256"),
        "error",
        r"neck_channels must be int, got '256' \(str\)",
    ),
    Case("use_fam='false'", lambda c: tiny_config(use_fam="false"), "error", r"use_fam must be bool, got 'false'"),
    Case("num_labels='19'", lambda c: tiny_config(num_labels="19"), "error", r"num_labels must be an int, got '19'"),
    Case(
        "id2label with a gap",
        lambda c: FaPNConfig(backbone="resnet18", id2label={0: "a", 2: "b"}),
        "error",
        r"without gaps.*missing \[1\]",
    ),
    Case(
        "label2id that is not id2label's inverse",
        lambda c: FaPNConfig(backbone="resnet18", id2label={0: "a", 1: "b"}, label2id={"a": 1, "b": 0}),
        "error",
        r"label2id .* is not the inverse of id2label",
    ),
    Case(
        "label2id without id2label",
        lambda c: FaPNConfig(backbone="resnet18", label2id={"road": 0, "car": 1}),
        "error",
        r"not the inverse of id2label",
    ),
    Case(
        "repeated class names",
        lambda c: FaPNConfig(backbone="resnet18", id2label={0: "a", 1: "a"}),
        "error",
        r"must be unique; repeated: \['a'\]",
    ),
    Case(
        "misspelt config key",
        lambda c: tiny_config(neck_chanels=64),
        "warning",
        r"unknown setting 'neck_chanels'.*did you mean 'neck_channels'",
    ),
    Case(
        "misspelt key in a saved config.json", misspelt_key_in_config_json, "warning", r"did you mean 'neck_channels'"
    ),
    Case(
        "misspelt recipe key",
        misspelt_recipe_key,
        "error",
        r"unknown arguments \['learning_rat'\]; 'learning_rat': did you mean 'learning_rate'",
    ),
    # Test-time augmentation and post-processing.
    Case(
        "NaN TTA scale", lambda c: TTAConfig(scales=(1.0, float("nan"))), "error", r"scales must be finite and positive"
    ),
    Case("infinite TTA scale", lambda c: TTAConfig(scales=(float("inf"),)), "error", r"finite and positive"),
    Case(
        "--scales 1 inf",
        lambda c: cli.parse_arguments(
            cli.EvaluateArguments, ["--model", "m", "--scales", "1", "inf"], "x", ""
        ).tta_config(),
        "error",
        r"finite and positive, got \(1.0, inf\)",
    ),
    Case("window with a zero side", lambda c: TTAConfig(window=(0, 8)), "error", r"window must be \(height, width\)"),
    Case(
        "target_sizes of another batch",
        target_sizes_for_another_batch,
        "error",
        r"got 1 target sizes for a batch of 2 images",
    ),
    # Model sources.
    Case(
        "mistyped model folder",
        lambda c: SegmentationPredictor.from_pretrained(str(c.tmp / "outputs" / "dmeo")),
        "error",
        r"model not found: there is no folder .*dmeo \(did you mean .*outputs/demo\?\)",
    ),
    Case(
        "mistyped nested model path",
        lambda c: SegmentationPredictor.from_pretrained("runs/a/b/fapn"),
        "error",
        r"model not found: there is no folder runs/a/b/fapn$",
    ),
    Case(
        "folder that is not a saved model",
        lambda c: SegmentationPredictor.from_pretrained(str(c.tmp)),
        "error",
        r"is a folder without config\.json",
    ),
    Case(
        "weights file as the model",
        lambda c: SegmentationPredictor.from_pretrained(model_file(c)),
        "error",
        r"model not found: .*model\.safetensors is a file",
    ),
    Case(
        "fapn-evaluate with a mistyped model",
        evaluate_script("--model", "{model}x"),
        "error",
        r"error: model not found",
    ),
    Case(
        "fine-tuning a mistyped model_name_or_path",
        fine_tune_mistyped,
        "error",
        r"model not found: there is no folder .*dmeo \(did you mean",
    ),
    Case(
        "fine-tuning with use_point_rend and another neck",
        fine_tune_with(use_point_rend=True, neck_channels=64),
        "error",
        r"use_point_rend=True \(the model has False\); neck_channels=64 \(the model has 32\)",
    ),
    Case("fine-tuning with the saved model's own settings", fine_tune_with(neck_channels=32, use_fam=True), "ok"),
    # Data sources, splits and labels.
    Case(
        "split that does not exist",
        lambda c: demo(validation_split="test"),
        "error",
        r"no split 'test'; it has \['train', 'validation'\]",
    ),
    Case(
        "validation_split 'valid' on a train-only set",
        lambda c: load_segmentation_dataset(
            str(imagefolder(c, "train-only", [sample()], "annotation_file_name")),
            train_split="validation",
            validation_split="valid",
        ),
        "error",
        r"no split 'valid'; it has \['validation'\].*validation_fraction",
    ),
    Case(
        "fapn-evaluate --split test",
        evaluate_script("--model", "{model}", "--dataset", "demo", "--split", "test"),
        "error",
        r"error: the data set has no split 'test'; it has \['train', 'validation'\]",
    ),
    Case("validation carved out of train only when asked", carved_only_when_asked, "ok"),
    Case(
        "metadata.csv without a label-file column",
        lambda c: load_segmentation_dataset(str(imagefolder(c, "mask-column", [sample()], "mask"))),
        "error",
        r"has the columns \['file_name', 'mask'\].*rename 'mask' to mask_file_name",
    ),
    Case(
        "metadata.csv naming label files in a plain 'label' column",
        lambda c: load_segmentation_dataset(str(imagefolder(c, "label-column", [sample()], "label")), train_split=None),
        "error",
        r"none names label files.*rename 'label' to label_file_name",
    ),
    Case("metadata.csv with a seg_file_name column", metadata_with_a_file_name_column, "ok"),
    Case(
        "raw Cityscapes ids without the mapping",
        raw_cityscapes_ids,
        "error",
        r"values \[26\].*raw cityscapes ids: map them with label_mapping='cityscapes'",
    ),
    Case(
        "dataset pointing at a file",
        lambda c: load_segmentation_dataset(str(bytes_file(c, "train.csv", b"a,b\n"))),
        "error",
        r"dataset '.*train\.csv' is a file",
    ),
    Case("local copy of a Hub parquet data set", parquet_copy, "ok"),
    Case(
        "no usable sample under the skip policy",
        all_samples_unusable,
        "error",
        r"the validation split has no usable sample \(2 samples\)",
    ),
    Case("validation labels all ignored", all_labels_ignored, "error", r"the validation split has no labelled pixel"),
    Case("16-bit training image, not saturated", sixteen_bit_training_image, "ok"),
    Case("EXIF-rotated image with a label of its displayed size", exif_label((16, 12)), "ok"),
    Case(
        "EXIF-rotated image with a label of its stored size",
        exif_label((12, 16)),
        "error",
        r"is 16x12 but its label .* is 12x16 \(HxW, EXIF orientation applied\)",
    ),
    # Training folders and checkpoints.
    Case(
        "training into a non-empty output_dir",
        non_empty_output_dir,
        "error",
        r"output_dir .*used is not empty \(model\.safetensors\).*--overwrite_output_dir",
    ),
    Case(
        "resume last after a kill during a checkpoint write",
        resume_after_a_kill,
        "error",
        r"checkpoint-6 is incomplete: it has no trainer_state\.json.*--resume_from_checkpoint .*checkpoint-3",
    ),
    Case("resume last without a checkpoint", resume_without_checkpoints, "error", r"holds no checkpoint-\* folder"),
    # fapn-predict's outputs.
    Case("fapn-predict with more than 256 classes", more_than_256_classes, "ok"),
    Case("fapn-predict with equal stems in two folders and two formats", same_stems, "ok"),
    Case("fapn-predict keeps existing outputs unless --overwrite", existing_outputs_kept, "ok"),
]


def _raised_by(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    return frames[-1].filename if frames else ""


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_input(case: Case, ctx: Context):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if case.expect == "error":
            with pytest.raises((ValueError, TypeError, OSError, SystemExit)) as info:
                case.run(ctx)
            message = str(info.value)
            assert re.search(case.pattern, message), f"{type(info.value).__name__}: {message}"
            raised_by = _raised_by(info.value)
            if case.origin == "fapn_hf":
                assert "/fapn_hf/" in raised_by, raised_by
            else:
                assert f"/{case.origin}/" in raised_by, raised_by
        else:
            result = case.run(ctx)
            assert result is None or result is not False, "the case's check failed"
    if case.expect == "warning":
        messages = [str(w.message) for w in caught]
        assert any(re.search(case.pattern, m) for m in messages), messages


def test_the_table_covers_every_outcome():
    outcomes = Counter(case.expect for case in CASES)
    print(f"input table: {dict(outcomes)} ({len(CASES)} cases)")
    assert set(outcomes) == {"ok", "error", "warning"} and len({case.name for case in CASES}) == len(CASES)
