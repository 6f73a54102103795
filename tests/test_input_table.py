"""Inputs as people have them, in one table: each case and the outcome it must have, for every registered family.

Outcomes: "ok" (the call succeeds and its checks hold), "error" (a clear error: the message matches the pattern and
is raised by fapn_hf or its commands, or the Space app, not from inside torch / PIL / datasets / transformers),
"warning" (the call succeeds and warns with a message matching the pattern). The categories are those of the issues
"One image path and one evaluation path" and "No wrong answer and no traceback a user can reach, in every family":
image kinds and bit depths, transparency and animation, wrong shapes and types, model inputs and labels,
post-processing, configs, test-time augmentation, model and data sources, splits, labels, training folders and
checkpoints, the commands (fapn-train, fapn-evaluate, fapn-predict) and the Space.

Every row runs for every registered family whose models predict per-pixel classes (`Family.predicts_pixel_classes`:
the families the semantic engines serve), on that family's small model
(tests/families_small.py), its image processor, a predictor and its saved folder, unless the row names the family in
`not_applicable` with the reason. A new family passes the table or says there why a row does not apply; a registered
family without a small build fails `test_every_registered_family_runs_the_table`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset, Features
from datasets import Image as ImageFeature
from families_small import PIXEL_CLASS_FAMILIES, SMALL, missing_families, small_config, small_spec
from PIL import Image
from safetensors.torch import save_file
from transformers import TimmBackboneConfig

from fapn_hf import FAMILIES, SegmentationPredictor, TTAConfig, decode_image, family_of
from fapn_hf.cli import commands as cli
from fapn_hf.families import Family
from fapn_hf.tasks.semantic.data import LabelSpec, check_samples, decode_sample, load_segmentation_dataset
from fapn_hf.training.args import DataArguments, FaPNTrainingArguments, ModelArguments, load_recipe
from fapn_hf.training.builders import build_model
from fapn_hf.training.run import main as train_main
from fapn_hf.training.run import run_training

REPO_ROOT = Path(__file__).resolve().parents[1]
# The table feeds the semantic engines (processor, predictor, Space, commands): it runs for every family whose models
# predict per-pixel classes. The detectors' inputs are checked in tests/test_modeling_fapn_rcnn.py and
# tests/test_image_processing_fapn_rcnn.py.
FAMILY_NAMES = PIXEL_CLASS_FAMILIES
NAMES = ["background", "blob", "box", "wire"]
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)
GRAY = RGB[..., 0].copy()
ALPHA = RNG.choice(np.array([0, 100, 255], np.uint8), (12, 16))
U16 = RNG.integers(0, 65536, (12, 16), dtype=np.uint16)
WHITE = np.full((12, 16, 3), 255, np.uint8)
# FaPN takes semantic label maps only: the rows of mask classification's targets do not apply to it.
MASK_TARGETS_ARE_MASKFORMERS = {"fapn": "FaPN takes semantic label maps (labels=), not mask_labels / class_labels"}
# The rows of FaPN's PointRend head do not apply to a family without one.
NOT_MASKFORMER_POINT_REND = {"maskformer_fapn": "MaskFormer + FaPN has no PointRend head"}


def gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


@functools.cache
def space_app() -> ModuleType:
    """space_app/app.py, imported once (gradio is slow to import: only the Space rows pay for it)."""
    spec = importlib.util.spec_from_file_location("space_app_input_table", REPO_ROOT / "space_app" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@dataclass
class Context:
    """One family's small model, its processor, a predictor over both, and the model saved as
    `<tmp>/outputs/demo` (with the processor)."""

    family: Family
    tmp: Path
    model: torch.nn.Module
    processor: Any
    predictor: SegmentationPredictor
    folder: Path

    @property
    def preset(self) -> str:
        return SMALL[self.family.name].preset

    @property
    def options(self) -> dict[str, Any]:
        """The small build's options (`ModelArguments` / `preset_config` names)."""
        return SMALL[self.family.name].options

    def config(self, labels: list[str] | None = None, **overrides: Any) -> Any:
        """The small build's config for `labels` (default NAMES) with `overrides`."""
        return small_config(self.family.name, labels or NAMES, **overrides)

    def build(self, labels: list[str] | None = None, **overrides: Any) -> torch.nn.Module:
        """A fresh small model of this family (training mode, as built)."""
        return self.family.head_class(self.config(labels, **overrides))

    def path(self, name: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @functools.cached_property
    def segmenter(self) -> Any:
        """The Space app's segmenter serving `folder`."""
        segmenter = space_app().load_segmenter(str(self.folder))
        assert segmenter.error is None, segmenter.error
        return segmenter


@dataclass
class Case:
    name: str
    run: Callable[[Context], Any]
    expect: str  # "ok", "error" or "warning"
    # one regular expression, one per family name, or one computed from the context
    pattern: str | Mapping[str, str] | Callable[[Context], str] = ""
    origin: str = "fapn_hf"  # who raises the error: fapn_hf (its commands included), space_app, or a library
    # family name -> why the row does not apply to that family (it then does not run for it)
    not_applicable: Mapping[str, str] = field(default_factory=dict)
    slow: bool = False  # trains: left out of the fast tier (-m "not slow")

    def pattern_for(self, c: Context) -> str:
        if callable(self.pattern):
            return self.pattern(c)
        return self.pattern if isinstance(self.pattern, str) else self.pattern[c.family.name]


def build_context(name: str, tmp: Path) -> Context:
    """Family `name`'s small model (random weights, seed 0), its preset's processor without resizing, a predictor
    and the folder both are saved to."""
    family = FAMILIES[name]
    small_spec(name)  # a registered family without a small build fails here, by name
    torch.manual_seed(0)
    model = family.head_class(small_config(name, NAMES)).eval()
    processor = family.preset_image_processor(SMALL[name].preset, NAMES, do_resize=False)
    folder = tmp / "outputs" / "demo"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return Context(family, tmp, model, processor, SegmentationPredictor(model, processor), folder)


@pytest.fixture(scope="module")
def contexts() -> dict[str, Context]:
    """The module's contexts, one per family, each built when its first row runs."""
    return {}


@pytest.fixture
def ctx(request, contexts, tmp_path_factory) -> Context:
    """The context of the family `request.param`, built once per module (pytest would rebuild a module-scoped
    fixture for every (family, case) parameter set)."""
    name = request.param
    if name not in contexts:
        contexts[name] = build_context(name, tmp_path_factory.mktemp(f"inputs-{name}"))
    return contexts[name]


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


def forward(c: Context, pixel_values: Any, labels: Any = None, model: torch.nn.Module | None = None, **inputs: Any):
    """The model (default: the context's, in eval mode) on `pixel_values`, with `labels` when given."""
    if labels is not None:
        inputs["labels"] = labels
    with torch.no_grad():
        return (model or c.model)(pixel_values=pixel_values, **inputs)


def mask_targets(masks: Any, classes: Any = None) -> Callable[[Context], Any]:
    """The model on one 32x32 image with MaskFormer's targets (`mask_labels`, and `class_labels` when given)."""

    def run(c: Context) -> Any:
        targets = {"mask_labels": masks} | ({} if classes is None else {"class_labels": classes})
        return forward(c, torch.zeros(1, 3, 32, 32), **targets)

    return run


def mask_targets_train(c: Context) -> None:
    """Two masks with their classes (one class absent from the image): a finite, positive loss."""
    masks = torch.zeros(2, 32, 32)
    masks[0, :16], masks[1, 16:] = 1, 1
    output = mask_targets([masks], [torch.tensor([1, 3])])(c)
    assert torch.isfinite(output.loss) and output.loss > 0


def unlabelled_batch_trains(c: Context) -> None:
    """A training batch whose pixels are all ignored: a finite loss and finite gradients in every family (mask
    classification still learns "no object" for its queries)."""
    model = c.build().train()
    output = model(torch.randn(2, 3, 32, 32), labels=torch.full((2, 32, 32), 255))
    assert torch.isfinite(output.loss), output.loss
    output.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def all_ignored_loss_is_zero_without_gradient(c: Context) -> None:
    model = c.build().train()
    output = model(torch.randn(2, 3, 32, 32), labels=torch.full((2, 32, 32), 255))
    assert output.loss.item() == 0.0
    output.loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def point_rend_loss(labelled: int) -> Callable[[Context], None]:
    def run(c: Context) -> None:
        model = c.build(
            use_point_rend=True, point_rend_train_num_points=64, point_rend_subdivision_num_points=256
        ).train()
        labels = torch.full((2, 32, 32), 255)
        labels.view(-1)[:labelled] = 1
        loss = model(torch.randn(2, 3, 32, 32), labels=labels).loss
        assert torch.isfinite(loss) and (loss.item() > 0 if labelled else loss.item() == 0.0)

    return run


def batch_of_one_in_training(c: Context) -> None:
    """One 32x32 image: the backbone's stride-32 map is 1x1, so its BatchNorm sees one value per channel."""
    c.build().train()(torch.randn(1, 3, 32, 32))


def batch_norm_neck_batch_of_one(c: Context) -> None:
    """The backbone's BatchNorm frozen, the neck's sees the 1x1 stride-32 map of one image."""
    c.build(neck_norm="BN", freeze_backbone_norm=True).train()(torch.randn(1, 3, 32, 32))


def backbone_at_wrong_strides(c: Context) -> None:
    config = c.config(backbone=None, backbone_config=TimmBackboneConfig(backbone="resnet18", out_indices=(0, 1, 2, 3)))
    forward(c, torch.randn(1, 3, 64, 64), model=c.family.head_class(config).eval())


def labels_of_another_size(c: Context) -> None:
    forward(c, torch.zeros(1, 3, 32, 32), torch.zeros(1, 16, 16, dtype=torch.long))


def processor_batch_with_label_maps(c: Context) -> None:
    """Two images of different sizes with their label maps through the processor: one padded batch the model takes,
    with a finite loss (the padding belongs to no class: labels padded with the ignore index, masks with 0)."""
    images = [RGB, RNG.integers(0, 256, (20, 9, 3), dtype=np.uint8)]
    maps = [np.full((12, 16), 1, np.uint8), np.full((20, 9), 2, np.uint8)]
    maps[0][:4] = 255
    inputs = c.processor(images, segmentation_maps=maps, return_tensors="pt")
    assert inputs["pixel_values"].shape[0] == 2
    output = forward(c, **inputs)
    assert torch.isfinite(output.loss), output.loss


def target_sizes_for_another_batch(c: Context) -> None:
    outputs = forward(c, torch.zeros(2, 3, 32, 32))
    c.processor.post_process_semantic_segmentation(outputs, target_sizes=[(8, 8)])


def target_sizes_as_one_pair(c: Context) -> None:
    outputs = forward(c, torch.zeros(1, 3, 32, 32))
    c.processor.post_process_semantic_segmentation(outputs, target_sizes=(8, 8))


def tuple_outputs_to_post_processing(c: Context) -> None:
    with torch.no_grad():
        outputs = c.model(pixel_values=torch.zeros(1, 3, 32, 32), return_dict=False)
    c.processor.post_process_semantic_segmentation(outputs)


def post_processing_at_target_sizes(c: Context) -> None:
    """Two images padded into one batch: each class map cropped to its image and resized to its target size."""
    images = [RGB, RNG.integers(0, 256, (20, 9, 3), dtype=np.uint8)]
    inputs = c.processor(images, return_tensors="pt")
    maps = c.processor.post_process_semantic_segmentation(forward(c, **inputs), target_sizes=[(24, 32), (20, 9)])
    assert [tuple(m.shape) for m in maps] == [(24, 32), (20, 9)]
    assert all(0 <= int(m.min()) and int(m.max()) < len(NAMES) for m in maps)
    np.testing.assert_array_equal(maps[1].numpy(), c.predictor.predict(images[1]))  # the predictor's answer


def misspelt_setting(c: Context) -> None:
    # deformable_groups: a setting every family's config has
    c.config(deformable_grups=4)


def misspelt_key_in_config_json(c: Context) -> None:
    folder = c.path("misspelt-config")
    c.model.config.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["deformable_grups"] = 4
    (folder / "config.json").write_text(json.dumps(config))
    c.family.config_class.from_pretrained(folder)


def misspelt_recipe_key(c: Context) -> None:
    recipe = c.path("recipes/typo.yaml")
    recipe.write_text(f"preset: {c.preset}\nlearning_rat: 0.01\n")
    load_recipe(recipe)


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


def evaluate_command(c: Context) -> None:
    """fapn-evaluate on a local folder of two samples: the scores of the family's saved model, written as JSON."""
    data = imagefolder(
        c, "evaluate", [sample(labels=(0, 1, 2, 3, 255), seed=s) for s in (1, 2)], "annotation_file_name"
    )
    output = c.path("scores/evaluate.json")
    assert cli.evaluate_main(["--model", str(c.folder), "--dataset", str(data), "--output", str(output)]) == 0
    scores = json.loads(output.read_text())
    assert scores["num_images"] == 2 and 0 <= scores["mean_iou"] <= 1 and 0 <= scores["pixel_accuracy"] <= 1


# ------------------------------------------------------------------------------------------------------ training


def training_arguments(c: Context, output_dir: Path, **training: Any):
    """fapn-train's arguments for the family's small build on a few 32x32 demo images."""
    return (
        ModelArguments(preset=c.preset, **c.options),
        DataArguments(demo_train_samples=2, demo_validation_samples=1, demo_size=32, crop_size=[32, 32]),
        FaPNTrainingArguments(output_dir=str(output_dir), report_to="none", **training),
    )


def train_command(c: Context) -> None:
    """fapn-train (its `main`, flags only) for one step of the small build; the folder it writes loads through the
    family's Auto class and fapn-predict serves it."""
    output = c.path("runs/train-command")
    options = [item for key, value in c.options.items() for item in (f"--{key}", str(value))]
    argv = [
        "--preset", c.preset, *options, "--dataset", "demo", "--demo_train_samples", "4",
        "--demo_validation_samples", "2", "--demo_size", "64", "--crop_size", "64", "64", "--max_steps", "1",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2", "--num_visualizations", "0",
        "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0", "--output_dir", str(output),
    ]  # fmt: skip
    assert train_main(argv) == 0
    model = c.family.auto_class.from_pretrained(output)
    assert family_of(model) is c.family and model.config.id2label[0] == "background"
    image = saved(c, "for-trained.png", Image.fromarray(RGB))
    predict(c, output, c.path("predictions/trained"), image)
    assert Image.open(c.tmp / "predictions/trained/for-trained_labels.png").size == (16, 12)


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


def fine_tune_with_saved_settings(c: Context) -> None:
    """Fine-tuning with every architecture option the saved folder has, at its own values."""
    model = build_model(
        ModelArguments(model_name_or_path=str(c.folder), **c.family.saved_options(c.model.config)), NAMES
    )
    assert type(model) is c.family.head_class


def foreign_option(c: Context) -> tuple[str, Any]:
    """An option another family takes and this one does not, with a value of its type."""
    own = (*c.family.options, *c.family.training_options)
    foreign = sorted(
        key for other in FAMILIES.values() for key in (*other.options, *other.training_options) if key not in own
    )
    assert foreign, "no option of another family to refuse"
    return foreign[0], True if foreign[0] in ("use_fam", "use_fsm", "use_point_rend") else 64


def foreign_option_refused(c: Context) -> str:
    """The message's words for that option: its value and this family's name."""
    key, value = foreign_option(c)
    return rf"{key}={value!r} \(a {re.escape(c.family.display_name)} model has none\)"


def fine_tune_with_foreign_option(c: Context) -> None:
    key, value = foreign_option(c)
    build_model(ModelArguments(model_name_or_path=str(c.folder), **{key: value}), NAMES)


def fine_tune_mistyped(c: Context) -> None:
    build_model(ModelArguments(model_name_or_path=str(c.tmp / "outputs" / "dmeo")), NAMES)


# ------------------------------------------------------------------------------------------------------- predict


def predict(c: Context, model: Path, output: Path, *images: Path, overwrite: bool = False) -> None:
    argv = ["--model", str(model), "--output_dir", str(output), *map(str, images)]
    assert cli.predict_main(argv + (["--overwrite"] if overwrite else [])) == 0


def predict_command(c: Context) -> None:
    """fapn-predict writes the predictor's class map of each image, at the image's size."""
    image = saved(c, "command/photo.png", Image.fromarray(RGB))
    predict(c, c.folder, c.path("predictions/command"), image)
    written = np.array(Image.open(c.tmp / "predictions/command/photo_labels.png"))
    np.testing.assert_array_equal(written, c.predictor.predict(RGB))


def more_than_256_classes(c: Context) -> None:
    names = [f"class {i}" for i in range(300)]
    folder = c.path("models/300-classes")
    c.build(names, semantic_loss_ignore_index=-1).save_pretrained(folder)
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


# ---------------------------------------------------------------------------------------------------------- Space


def space_segment(c: Context, upload: Path | None) -> tuple[Any, ...]:
    """The Space app's `segment` (what its page and API call) on `upload`, one view, with the family's model."""
    cache = c.path("space-cache/x").parent
    return space_app().segment(
        c.segmenter, None if upload is None else str(upload), False, False, 0.5, False, str(cache)
    )


def space_segments_an_upload(c: Context) -> None:
    """The Space shows the package's answer: the predictor's class map at the upload's size, and its areas."""
    overlay, legend, table, status, result = space_segment(c, saved(c, "space/photo.png", Image.fromarray(RGB)))
    np.testing.assert_array_equal(result.labels, c.predictor.predict(RGB))
    assert Path(overlay).is_file() and "16x12 image" in status
    assert sum(row[2] for row in table) == 12 * 16 and all(row[0] in NAMES for row in table)


def space_animated_upload(c: Context) -> None:
    *_, status, result = space_segment(c, animated_gif(c))
    assert result.labels.shape == (12, 16)
    assert re.search(r"Note: .*animated \(2 frames\).*first frame", status), status


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
    # Mask classification's own targets.
    Case("mask_labels with their class_labels", mask_targets_train, "ok", not_applicable=MASK_TARGETS_ARE_MASKFORMERS),
    Case(
        "mask_labels without class_labels",
        mask_targets([torch.ones(1, 32, 32)]),
        "error",
        r"mask_labels and class_labels must both be given",
        not_applicable=MASK_TARGETS_ARE_MASKFORMERS,
    ),
    Case(
        "labels and mask_labels together",
        lambda c: forward(
            c,
            torch.zeros(1, 3, 32, 32),
            torch.zeros(1, 32, 32, dtype=torch.long),
            mask_labels=[torch.ones(1, 32, 32)],
            class_labels=[torch.tensor([0])],
        ),
        "error",
        r"pass either labels .* or mask_labels and class_labels",
        not_applicable=MASK_TARGETS_ARE_MASKFORMERS,
    ),
    Case(
        "class_labels outside the label map",
        mask_targets([torch.ones(1, 32, 32)], [torch.tensor([9])]),
        "error",
        r"class_labels\[0\].*\[9\]",
        not_applicable=MASK_TARGETS_ARE_MASKFORMERS,
    ),
    Case(
        "class_labels holding the 'no object' id",
        mask_targets([torch.ones(1, 32, 32)], [torch.tensor([4])]),
        "error",
        r'4 is the id of the "no object" class',
        not_applicable=MASK_TARGETS_ARE_MASKFORMERS,
    ),
    Case(
        "one mask without its mask axis",
        mask_targets([torch.ones(32, 32)], [torch.tensor([1])]),
        "error",
        r"mask_labels\[0\] must be \(num_targets, height, width\).*add the mask axis",
        not_applicable=MASK_TARGETS_ARE_MASKFORMERS,
    ),
    Case(
        "mask_labels padded with 255",
        mask_targets([torch.full((1, 32, 32), 255.0)], [torch.tensor([1])]),
        "error",
        r"mask_labels\[0\] must hold 0 and 1 .*got also \[255\].*padding",
        not_applicable=MASK_TARGETS_ARE_MASKFORMERS,
    ),
    Case(
        "labels of another size than pixel_values",
        labels_of_another_size,
        "error",
        r"labels must have shape \(batch, height, width\) = \(1, 32, 32\), got \(1, 16, 16\)",
    ),
    Case("all labels ignored: a finite loss and gradients", unlabelled_batch_trains, "ok"),
    Case(
        "all labels ignored: loss 0, no gradient",
        all_ignored_loss_is_zero_without_gradient,
        "ok",
        not_applicable={
            "maskformer_fapn": "mask classification learns 'no object' for every query of an image without labelled "
            "pixels: its loss is positive (the row above holds it to a finite loss)"
        },
    ),
    Case("PointRend with one labelled pixel", point_rend_loss(1), "ok", not_applicable=NOT_MASKFORMER_POINT_REND),
    Case(
        "PointRend without a labelled pixel",
        point_rend_loss(0),
        "ok",
        not_applicable=NOT_MASKFORMER_POINT_REND,
    ),
    Case(
        "one 32x32 image per batch in training",
        batch_of_one_in_training,
        "error",
        r"BatchNorm layer saw one value per channel.*batch of 1 image.*at least 2 images",
    ),
    Case(
        "BatchNorm neck on a frozen backbone, one image per batch in training",
        batch_norm_neck_batch_of_one,
        "error",
        r"BatchNorm layer saw one value per channel.*batch of 1 image.*at least 2 images",
        not_applicable={"maskformer_fapn": "MaskFormer + FaPN's pixel decoder has GroupNorm only (no neck_norm)"},
    ),
    Case("backbone at strides 2..16", backbone_at_wrong_strides, "error", r"strides 4, 8, 16, 32.*out_indices"),
    Case(
        "timm backbone without a stride-32 map",
        lambda c: c.family.config_class(backbone="vit_tiny_patch16_224"),
        "error",
        r"feature strides \[16, 16, 16\]; FaPN needs maps at strides",
    ),
    # The image processor: batches with labels, and post-processing.
    Case("None to the processor", lambda c: c.processor(None), "error", r"got NoneType|no images"),
    Case("images with label maps of two sizes to the processor", processor_batch_with_label_maps, "ok"),
    Case(
        "label map of another size than its image to the processor",
        lambda c: c.processor(RGB, segmentation_maps=np.zeros((6, 8), np.uint8)),
        "error",
        r"6x8.*12x16|\(6, 8\).*\(12, 16\)",
    ),
    Case("post-processing a padded batch at target sizes", post_processing_at_target_sizes, "ok"),
    Case(
        "post-processing the tuple of return_dict=False",
        tuple_outputs_to_post_processing,
        "error",
        r"takes the model's output object.*return_dict=True",
    ),
    Case(
        "target_sizes as one (height, width) pair",
        target_sizes_as_one_pair,
        "error",
        r"target_sizes takes one \(height, width\) per image, got \(8, 8\)",
    ),
    # Configs.
    Case(
        "neck_channels='256'",
        lambda c: c.config(neck_channels="256"),
        "error",
        r"(neck_channels|fpn_feature_size) must be int, got '256' \(str\)",
    ),
    Case(
        "use_fam='false'",
        lambda c: c.config(use_fam="false"),
        "error",
        r"use_fam must be bool, got 'false'",
        not_applicable={"maskformer_fapn": "MaskFormer + FaPN has no use_fam switch (pixel_decoder picks the decoder)"},
    ),
    Case(
        "freeze_backbone_norm='false'",
        lambda c: c.config(freeze_backbone_norm="false"),
        "error",
        r"freeze_backbone_norm must be bool, got 'false'",
    ),
    Case(
        "num_labels='19'",
        lambda c: c.family.config_class(backbone="resnet18", num_labels="19"),
        "error",
        r"num_labels must be an int, got '19'",
    ),
    Case(
        "id2label with a gap",
        lambda c: c.family.config_class(backbone="resnet18", id2label={0: "a", 2: "b"}),
        "error",
        r"without gaps.*missing \[1\]",
    ),
    Case(
        "label2id that is not id2label's inverse",
        lambda c: c.family.config_class(backbone="resnet18", id2label={0: "a", 1: "b"}, label2id={"a": 1, "b": 0}),
        "error",
        r"label2id .* is not the inverse of id2label",
    ),
    Case(
        "label2id without id2label",
        lambda c: c.family.config_class(backbone="resnet18", label2id={"road": 0, "car": 1}),
        "error",
        r"not the inverse of id2label",
    ),
    Case(
        "repeated class names",
        lambda c: c.family.config_class(backbone="resnet18", id2label={0: "a", 1: "a"}),
        "error",
        r"must be unique; repeated: \['a'\]",
    ),
    Case(
        "misspelt config key",
        misspelt_setting,
        "warning",
        r"unknown setting 'deformable_grups'.*did you mean 'deformable_groups'",
    ),
    Case(
        "misspelt key in a saved config.json",
        misspelt_key_in_config_json,
        "warning",
        r"did you mean 'deformable_groups'",
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
        "fine-tuning with another neck width",
        fine_tune_with(neck_channels=128),
        "error",
        r"neck_channels=128 \(the model has 64\)",
    ),
    Case(
        "fine-tuning with use_point_rend and another neck",
        fine_tune_with(use_point_rend=True, neck_channels=128),
        "error",
        r"use_point_rend=True \(the model has False\); neck_channels=128 \(the model has 64\)",
        not_applicable=NOT_MASKFORMER_POINT_REND,
    ),
    Case(
        "fine-tuning with an option of another family",
        fine_tune_with_foreign_option,
        "error",
        foreign_option_refused,
    ),
    Case("fine-tuning with the saved model's own settings", fine_tune_with_saved_settings, "ok"),
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
    # The commands and the Space, on each family's saved folder.
    Case("fapn-train runs a step and saves a folder that predicts", train_command, "ok", slow=True),
    Case("fapn-evaluate scores a local data set", evaluate_command, "ok"),
    Case("fapn-predict writes the predictor's class map", predict_command, "ok"),
    Case("fapn-predict with more than 256 classes", more_than_256_classes, "ok"),
    Case("fapn-predict with equal stems in two folders and two formats", same_stems, "ok"),
    Case("fapn-predict keeps existing outputs unless --overwrite", existing_outputs_kept, "ok"),
    Case("Space: an upload is segmented as the predictor does", space_segments_an_upload, "ok"),
    Case("Space: an animated GIF upload, first frame, said so", space_animated_upload, "ok"),
    Case("Space: no upload", lambda c: space_segment(c, None), "error", r"Upload an image first", origin="space_app"),
    Case(
        "Space: an empty file",
        lambda c: space_segment(c, bytes_file(c, "space/empty.png", b"")),
        "error",
        r"empty\.png is empty \(0 bytes\)",
        origin="space_app",
    ),
    Case(
        "Space: a text file named .jpg",
        lambda c: space_segment(c, bytes_file(c, "space/notes.jpg", b"shopping list")),
        "error",
        r"notes\.jpg could not be read: its content is not an image",
        origin="space_app",
    ),
    Case(
        "Space: a truncated PNG",
        lambda c: space_segment(c, truncated_png(c)),
        "error",
        r"truncated\.png is cut short",
        origin="space_app",
    ),
    Case(
        "Space: a float TIFF outside [0, 1]",
        lambda c: space_segment(c, saved(c, "space/bright.tif", Image.fromarray(np.full((4, 4), 3.5, np.float32)))),
        "error",
        r"bright\.tif could not be read: .*taken as \[0, 1\]",
        origin="space_app",
    ),
]


def _raised_by(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    return frames[-1].filename if frames else ""


def _rows() -> list[Any]:
    """(family, case) for every case that applies to a registered family; training rows marked slow."""
    return [
        pytest.param(name, case, id=f"{name}-{case.name}", marks=[pytest.mark.slow] if case.slow else [])
        for name in FAMILY_NAMES
        for case in CASES
        if name not in case.not_applicable
    ]


@pytest.mark.parametrize(("ctx", "case"), _rows(), indirect=["ctx"])
def test_input(case: Case, ctx: Context):
    pattern = case.pattern_for(ctx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if case.expect == "error":
            # gradio's Error, what the Space raises to its page and API clients, is a ValueError
            with pytest.raises((ValueError, TypeError, OSError, SystemExit)) as info:
                case.run(ctx)
            message = str(info.value)
            assert re.search(pattern, message), f"{type(info.value).__name__}: {message}"
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
        assert any(re.search(pattern, m) for m in messages), messages


def test_every_registered_family_runs_the_table():
    """A registered family without a small build (tests/families_small.py) would run no row: it fails here."""
    assert missing_families() == [], "add the family's small build to tests/families_small.py"
    assert {param.values[0] for param in _rows()} == set(PIXEL_CLASS_FAMILIES)


def test_a_row_that_does_not_apply_says_why():
    for case in CASES:
        assert set(case.not_applicable) <= set(FAMILY_NAMES), (case.name, "names a family the table does not run")
        assert all(len(reason.split()) >= 3 for reason in case.not_applicable.values()), (case.name, "says why")
        assert set(case.not_applicable) != set(FAMILY_NAMES), (case.name, "applies to no family")
        if isinstance(case.pattern, Mapping):  # one pattern per family: for every family it runs for
            assert set(case.pattern) >= set(FAMILY_NAMES) - set(case.not_applicable), case.name


def test_the_table_covers_every_outcome():
    outcomes = Counter(case.expect for case in CASES)
    for name in FAMILY_NAMES:
        skipped = {case.name: case.not_applicable[name] for case in CASES if name in case.not_applicable}
        print(f"{name}: {len(CASES) - len(skipped)} rows run, {len(skipped)} not applicable: {skipped}")
    print(f"input table: {dict(outcomes)} ({len(CASES)} cases)")
    assert set(outcomes) == {"ok", "error", "warning"} and len({case.name for case in CASES}) == len(CASES)
