"""The command line of fapn_hf: one dialect, `HfArgumentParser` dataclasses, for every command.

    fapn-evaluate --model outputs/demo --dataset demo --scales 0.75 1.0 1.25 --flip
    fapn-predict --model outputs/demo --output_dir outputs/predictions photo1.jpg photo2.png
    fapn-create-model --preset fapn-r50 --labels cityscapes --output_dir outputs/fapn-r50-cityscapes
    fapn-push --model_dir outputs/demo --repo_id ORG/fapn-r18-demo --dry_run
    fapn-convert --checkpoint model_final.pth --model fapn-r50-pointrend-cityscapes --output_dir fapn-r50-pointrend
    fapn-export-onnx outputs/demo
    fapn-benchmark --quick --output outputs/bench.json
    fapn-build-space --model_id ORG/fapn-r18-demo --output_dir outputs/space --model_path outputs/demo
    python -m fapn_hf predict --model outputs/demo photo.jpg          # the same commands, plus `train`

Each command is a dataclass of arguments (its `--help` lists them) and a `*_main(argv)` that parses them, runs the
library function and returns the exit status; an expected user error (missing file, invalid value, no token, the
Hub out of reach) ends it with `error: MESSAGE` on stderr and status 1, without a traceback. Flags are written with
underscores like `train`'s (`--output_dir`); the dashed spelling (`--output-dir`) is accepted too. Boolean flags
take an optional value (`--flip`, `--flip true`, `--flip false`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from importlib import import_module
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import PIL.Image
import torch
from transformers import HfArgumentParser

from .._version import __version__
from ..export.onnx import DEFAULT_OPSET, OnnxVerificationError, export_onnx
from ..families import all_presets, family_of_preset, original_models
from ..hub.cards import plan_upload, push_folder, require_token
from ..hub.conversion import convert_checkpoint
from ..hub.space import DEFAULT_SHORT_DESCRIPTION, build_space
from ..inference.detection import (
    DetectionPredictor,
    coco_detection_results,
    coco_panoptic_annotation,
    load_predictor,
    panoptic_rgb,
)
from ..inference.evaluation import evaluate, evaluate_detector, scored_on_post_processing
from ..inference.predictor import TTAConfig
from ..inference.sources import load_model
from ..labels import palette
from ..modeling.image_decoding import decode_image
from ..tasks.detection.visualization import draw_detections, draw_panoptic
from ..tasks.semantic.visualization import overlay

ArgumentsT = TypeVar("ArgumentsT")

EPILOG = (
    "Flags take underscores (--output_dir) or dashes (--output-dir); boolean flags take an optional true/false "
    "(--flip, --flip false). Errors end with 'error: ...' and exit status 1 (2: a malformed command line)."
)
# A palette PNG holds 256 colours; models with more classes get 16-bit grayscale label maps.
PALETTE_SIZE = 256


def _help(text: str, **extra: Any) -> dict[str, Any]:
    """Field metadata: the `--help` text (and, for positional arguments, argparse's `nargs` / `type`)."""
    return {"help": text, **extra}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help and the description's line breaks kept (its usage examples)."""


def parse_arguments(
    arguments_class: type[ArgumentsT], argv: Sequence[str] | None, prog: str, description: str
) -> ArgumentsT:
    """Parses `argv` (default: `sys.argv[1:]`) into `arguments_class` with `HfArgumentParser`.

    Fields with `init=False` are positional arguments (their metadata holds argparse's `nargs` and `type`); every
    other field is a flag. A value that the dataclass rejects (`ValueError` in `__post_init__`) ends the command like
    any user error."""
    parser = HfArgumentParser(
        arguments_class, prog=prog, description=description, epilog=EPILOG, formatter_class=_HelpFormatter
    )
    positional = [item for item in fields(arguments_class) if not item.init]
    for item in positional:
        parser.add_argument(item.name, **item.metadata)
    argv = sys.argv[1:] if argv is None else list(argv)
    with user_errors(ValueError):
        if positional:
            argv = _inputs_after_number_lists(parser, argv)
        parsed, *rest = parser.parse_args_into_dataclasses(
            args=_explicit_booleans(parser, argv), look_for_args_file=False
        )
    for item in positional:
        setattr(parsed, item.name, getattr(rest[0], item.name))
    return parsed


# What HfArgumentParser's boolean flags accept as a value (transformers.hf_argparser.string_to_bool).
BOOLEAN_WORDS = frozenset({"yes", "no", "true", "false", "t", "f", "y", "n", "1", "0"})


def _inputs_after_number_lists(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`argv` with the positional inputs that follow a list of numbers moved behind `--`.

    argparse lets a list-valued flag (`--scales`, `--window`, `--short_sides`) take every word up to the next flag,
    so `fapn-predict --window 512 512 photo.jpg` would read `photo.jpg` as a window side. A list of numbers ends at
    its first word that is not a number here; the words from there to the next flag are inputs."""
    number_lists = {
        option: action.type
        for action in parser._actions  # the parser's own list of arguments
        if action.nargs in ("+", "*") and action.type in (int, float)
        for option in action.option_strings
    }

    def is_number(word: str, kind: type) -> bool:
        try:
            kind(word)
        except ValueError:
            return False
        return True

    kept, inputs = [], []
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--":
            inputs += argv[index + 1 :]
            break
        kept.append(word)
        index += 1
        kind = number_lists.get(word)
        if kind is None:
            continue
        while index < len(argv) and is_number(argv[index], kind):
            kept.append(argv[index])
            index += 1
        while index < len(argv) and argv[index] != "--" and not argv[index].startswith("-"):
            inputs.append(argv[index])
            index += 1
    return kept + (["--", *inputs] if inputs else [])


def _explicit_booleans(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`argv` with `true` after each boolean flag that is not followed by a boolean word.

    HfArgumentParser's boolean flags take an optional value, so argparse would read the word after `--flip` as its
    value even when it is a positional argument (`fapn-predict --flip photo.jpg`); a boolean flag takes a value only
    when that value is a boolean word."""
    flags = {
        option
        for action in parser._actions  # the parser's own list of arguments
        if action.nargs == "?" and action.const is True
        for option in action.option_strings
    }
    explicit = []
    for index, word in enumerate(argv):
        if word == "--":  # the rest is positional
            return explicit + argv[index:]
        explicit.append(word)
        following = argv[index + 1] if index + 1 < len(argv) else None
        if word in flags and (following is None or following.lower() not in BOOLEAN_WORDS):
            explicit.append("true")
    return explicit


@contextmanager
def user_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Turns the expected errors `kinds` into `SystemExit("error: MESSAGE")`: a message, no traceback."""
    try:
        yield
    except kinds as error:
        raise SystemExit(f"error: {error}") from error


@dataclass(kw_only=True)
class TTAArguments:
    """The test-time augmentation flags of `fapn-evaluate` and `fapn-predict` (a `TTAConfig`)."""

    scales: list[float] = field(
        default_factory=lambda: [1.0], metadata=_help("TTA scales of the processor's size, e.g. 0.75 1.0 1.25")
    )
    short_sides: list[int] | None = field(
        default=None,
        metadata=_help(
            "TTA views by shorter side in pixels instead of --scales; the original MaskFormer + FaPN test is "
            "--short_sides 320 480 640 800 960 1120 --max_size 4480 --flip"
        ),
    )
    max_size: int | None = field(default=None, metadata=_help("longest side of a --short_sides view"))
    flip: bool = field(default=False, metadata=_help("also average the horizontally flipped prediction"))
    window: list[int] | None = field(
        default=None, metadata=_help("sliding windows for large images: height width (one value: a square)")
    )

    def tta_config(self) -> TTAConfig:
        """The flags as a `TTAConfig` (`ValueError` names a bad value)."""
        window = self.window
        if window is not None:
            if len(window) not in (1, 2):
                raise ValueError(f"--window takes height and width (or one value for a square), got {window}")
            window = (window[0], window[-1])
        return TTAConfig(
            scales=tuple(self.scales),
            flip=self.flip,
            window=window,
            short_sides=None if self.short_sides is None else tuple(self.short_sides),
            max_size=self.max_size,
        )


# ---------------------------------------------------------------------------------------------------------------------
# fapn-evaluate
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluateArguments(TTAArguments):
    """`fapn-evaluate`: mIoU, per-class IoU, pixel accuracy and boundary mIoU at 3/5/8/12 px of a model on a
    segmentation data set, at each label's original resolution (the Trainer's evaluation scores the same way)."""

    model: str = field(metadata=_help("model folder or Hub id"))
    dataset: str = field(
        default="demo",
        metadata=_help(
            "'demo'; a Cityscapes, ADE20K, COCO-Stuff-10K/-164K or Pascal VOC folder as downloaded (labels, mapping "
            "and reduction come with it); another local folder; or a Hub data set id"
        ),
    )
    dataset_config: str | None = field(default=None, metadata=_help("configuration of a Hub data set"))
    dataset_revision: str | None = field(default=None, metadata=_help("revision of a Hub data set"))
    split: str | None = field(
        default=None,
        metadata=_help(
            "split of the source to evaluate (it must exist); default 'validation', or for a folder written by "
            "fapn-train the images its run held out of this data set (--validation_fraction)"
        ),
    )
    validation_fraction: float | None = field(
        default=None,
        metadata=_help("evaluate this fraction held out of 'train' instead, as train's --validation_fraction does"),
    )
    seed: int = field(default=0, metadata=_help("seed of --validation_fraction (train's --seed)"))
    image_column: str = field(default="image", metadata=_help("the source's image column"))
    label_column: str = field(default="label", metadata=_help("the source's label column"))
    label_mapping: str | None = field(
        default=None, metadata=_help("raw id mapping, e.g. 'cityscapes' (a folder layout: its own)")
    )
    reduce_labels: bool | None = field(
        default=None,
        metadata=_help("0 -> ignore, others minus 1 (ADE20K; a folder layout: its own)", nargs="?", const=True),
    )
    max_samples: int | None = field(default=None, metadata=_help("evaluate only the first N samples"))
    bad_sample_policy: Literal["fail", "skip"] = field(
        default="fail", metadata=_help("what an unreadable sample or out-of-range label does")
    )
    device: str | None = field(default=None, metadata=_help("torch device (default: cuda if available)"))
    trust_remote_code: bool = field(default=False, metadata=_help("allow a Hub model's own code"))
    output: Path | None = field(default=None, metadata=_help("write the metrics as JSON to this file"))


def _evaluation_source(args: EvaluateArguments) -> dict[str, Any]:
    """The data-source options both evaluations take (which split, held-out fraction, dataset revision, columns)."""
    return {
        "split": args.split,
        "validation_fraction": args.validation_fraction,
        "seed": args.seed,
        "dataset_config": args.dataset_config,
        "dataset_revision": args.dataset_revision,
        "image_column": args.image_column,
    }


def _evaluate_detector_main(args: EvaluateArguments) -> int:
    """`fapn-evaluate` of a detector: COCO box / mask AP or PQ (`fapn_hf.inference.evaluation.evaluate_detector`)."""
    refused = {
        "label_mapping": args.label_mapping,
        "reduce_labels": args.reduce_labels,
        "tta": None if args.tta_config() == TTAConfig() else args.tta_config(),
    }
    given = {name: value for name, value in refused.items() if value}
    with user_errors(ValueError, FileNotFoundError):
        if given:
            raise ValueError(f"{sorted(given)} apply to semantic segmentation models, not to detectors")
        result = evaluate_detector(
            args.model,
            args.dataset,
            **_evaluation_source(args),
            # a detection source's objects column (transformers' object-detection schema) unless named
            label_column="objects" if args.label_column == "label" else args.label_column,
            max_samples=args.max_samples,
            bad_sample_policy=args.bad_sample_policy,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
        )
    scores = result["scores"]
    print(
        f"{args.model} on {args.dataset} ({result['split']}, {result['num_images']} images, {result['seconds']:.1f} s, "
        f"{result['task']})"
    )
    for key, value in scores.items():
        if "-" not in key:  # per-class values go to --output
            print(f"  {key}: {value:.4f}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """`fapn-evaluate`: prints the scores of `fapn_hf.inference.evaluation.evaluate` (writes them with `--output`)."""
    args = parse_arguments(EvaluateArguments, argv, "fapn-evaluate", inspect.cleandoc(EvaluateArguments.__doc__))
    with user_errors(ValueError, FileNotFoundError):
        detector = scored_on_post_processing(args.model, args.trust_remote_code)
    if detector:
        return _evaluate_detector_main(args)
    with user_errors(ValueError, FileNotFoundError):
        result = evaluate(
            args.model,
            args.dataset,
            **_evaluation_source(args),
            label_column=args.label_column,
            label_mapping=args.label_mapping,
            reduce_labels=args.reduce_labels,
            max_samples=args.max_samples,
            bad_sample_policy=args.bad_sample_policy,
            tta=args.tta_config(),
            device=args.device,
            trust_remote_code=args.trust_remote_code,
        )
    tta, data = result["tta"], result["data"]
    print(
        f"{args.model} on {args.dataset} ({result['split']}, {result['num_images']} images, {result['seconds']:.1f} s)"
    )
    views = (
        f"short sides {tta['short_sides']} (max {tta['max_size']})"
        if "short_sides" in tta
        else f"scales {tta['scales']}"
    )
    print(f"TTA: {views}, flip {tta['flip']}, window {tta['window']}")
    for key, value in result.items():
        if isinstance(value, float) and key != "seconds":
            print(f"  {key:22s} {value:.4f}")
    print("  per-class IoU:")
    for name, value in result["per_class_iou"].items():
        print(f"    {name:20s} {value:.4f}")
    if data["num_skipped"]:
        print(f"  skipped {data['num_skipped']} unusable samples")
    for note in result["notes"]:
        print(f"note: {note}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# fapn-predict
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PredictArguments(TTAArguments):
    """`fapn-predict`: segments images with a FaPN model: a label PNG (class ids, with the palette) and a colour
    overlay per image; with a detector (Faster/Mask R-CNN, Panoptic FPN), COCO-format results and a drawing.

    Images are read like everywhere in fapn_hf (`fapn_hf.decode_image`: EXIF orientation,
    16-bit and float images, transparency over white, first frame of animations). Outputs are
    `<stem>_labels.png` and `<stem>_overlay.png`, in sub-folders mirroring the inputs' folders below their common
    folder; inputs of one folder that share a stem keep their extension in the name (`photo_png`, `photo_jpg`).
    Existing outputs are kept unless `--overwrite`. Models with more than 256 classes get 16-bit grayscale label PNGs
    (a palette holds 256 colours).

    Detectors write, for all images together, `images.json` (COCO `images`: id, file_name, height, width; and
    `categories`: the model's class ids and names) and `results.json` (COCO detection results: image_id,
    category_id = class id, bbox [x, y, w, h], score, and RLE `segmentation` for Mask R-CNN; every detection the
    model returns), or for Panoptic FPN `panoptic/<stem>.png` (COCO panoptic ids, R + 256 G + 256^2 B) and
    `panoptic.json` (`annotations` with `segments_info`); and `<stem>_detections.png`, a drawing of the boxes,
    masks and labels with a score of at least `--threshold` (the panoptic segments for Panoptic FPN)."""

    model: str = field(metadata=_help("model folder or Hub id"))
    threshold: float = field(default=0.5, metadata=_help("detectors: least score of a drawn detection"))
    output_dir: Path = field(default=Path("outputs/predictions"), metadata=_help("folder of the outputs"))
    overwrite: bool = field(default=False, metadata=_help("replace existing outputs (without it: keep them)"))
    alpha: float = field(default=0.5, metadata=_help("overlay opacity"))
    device: str | None = field(default=None, metadata=_help("torch device (default: cuda if available)"))
    threads: str = field(
        default="auto",
        metadata=_help("CPU threads: a number, or auto (one per core, fewer while other processes keep cores busy)"),
    )
    precision: Literal["float32", "bfloat16", "auto"] = field(
        default="float32",
        metadata=_help("segmentation models: bfloat16 autocast, or auto (bf16 on CUDA or a CPU with native bf16)"),
    )
    trust_remote_code: bool = field(default=False, metadata=_help("allow a Hub model's own code"))
    images: list[Path] = field(default_factory=list, init=False, metadata=_help("image files", nargs="+", type=Path))


def output_names(paths: list[Path]) -> dict[Path, Path]:
    """A distinct output stem (relative path without suffix) for each distinct input file, see `PredictArguments`."""
    files = list(dict.fromkeys(path.resolve() for path in paths))
    common = Path(os.path.commonpath([path.parent for path in files]))
    stems = Counter((path.parent, path.stem) for path in files)
    names = {
        path: path.parent.relative_to(common)
        / (f"{path.stem}_{path.suffix.lstrip('.')}" if stems[path.parent, path.stem] > 1 else path.stem)
        for path in files
    }
    # Whatever still collides (e.g. photo.png + photo.jpg + photo_png.gif) gets a counter.
    seen: Counter[Path] = Counter()
    for path, name in names.items():
        seen[name] += 1
        if seen[name] > 1:
            names[path] = name.with_name(f"{name.name}_{seen[name]}")
    return names


def label_image(labels: np.ndarray, colors: np.ndarray) -> PIL.Image.Image:
    """Class ids `(H, W)` as a palette PNG image, or as 16-bit grayscale when they do not fit a palette."""
    if len(colors) > PALETTE_SIZE:
        return PIL.Image.fromarray(labels.astype(np.uint16))
    image = PIL.Image.fromarray(labels.astype(np.uint8))
    image.putpalette(colors.flatten().tolist())  # an "L" image with a palette becomes "P"
    return image


def predict_main(argv: Sequence[str] | None = None) -> int:
    """`fapn-predict`: writes a label map and an overlay per image; status 1 when every image was unreadable."""
    args = parse_arguments(PredictArguments, argv, "fapn-predict", inspect.cleandoc(PredictArguments.__doc__))
    with user_errors(ValueError, FileNotFoundError):
        tta = args.tta_config()
        predictor = load_predictor(
            args.model, args.device, args.trust_remote_code, threads=args.threads, precision=args.precision
        )
        if isinstance(predictor, DetectionPredictor) and (tta.num_views != 1 or tta.window is not None):
            raise ValueError("test-time augmentation flags (--scales, --short_sides, --flip, --window) are for "
                             "segmentation models; a detector predicts each image once")  # fmt: skip
    if isinstance(predictor, DetectionPredictor):
        return _predict_detections(predictor, args)
    names = [predictor.id2label[i] for i in range(len(predictor.id2label))]
    colors = palette(len(names), names)
    if len(names) > PALETTE_SIZE:
        print(f"{len(names)} classes do not fit a palette PNG ({PALETTE_SIZE} colours): label maps are 16-bit PNGs")
    outputs = output_names(args.images)
    written, kept, failed = 0, 0, 0
    for path, name in outputs.items():
        labels_path = args.output_dir / f"{name}_labels.png"
        overlay_path = args.output_dir / f"{name}_overlay.png"
        existing = [p for p in (labels_path, overlay_path) if p.exists()]
        if existing and not args.overwrite:
            print(f"kept {', '.join(map(str, existing))} (exists; --overwrite replaces it)", file=sys.stderr)
            kept += 1
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image = decode_image(path)
        except (ValueError, FileNotFoundError) as error:
            print(f"skipped {path}: {error}", file=sys.stderr)
            failed += 1
            continue
        for warning in caught:
            print(f"note: {warning.message}", file=sys.stderr)
        labels = predictor.predict(image, tta)
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        label_image(labels, colors).save(labels_path)
        PIL.Image.fromarray(overlay(image, labels, colors, args.alpha)).save(overlay_path)
        written += 1
        present = ", ".join(f"{names[i]} {100 * np.mean(labels == i):.1f}%" for i in np.unique(labels))
        print(f"{path} -> {labels_path.name}: {present}")
    summary = f"wrote {written} label maps and overlays to {args.output_dir}"
    if kept:
        summary += f"; kept {kept} existing (--overwrite replaces them)"
    if failed:
        summary += f"; {failed} unreadable"
    duplicates = len(args.images) - len(outputs)
    if duplicates:
        summary += f"; {duplicates} repeated input(s) done once"
    print(summary)
    return 1 if failed and not written and not kept else 0


def _predict_detections(predictor: DetectionPredictor, args: PredictArguments) -> int:
    """`fapn-predict` for a detector (see `PredictArguments`): COCO results of all images and a drawing each."""
    names = [predictor.id2label[i] for i in range(len(predictor.id2label))]
    colors = palette(len(names), names)
    things = predictor.num_thing_labels
    images, results, annotations, failed = [], [], [], 0
    for image_id, (path, name) in enumerate(output_names(args.images).items(), start=1):
        drawing_path = args.output_dir / f"{name}_detections.png"
        if drawing_path.exists() and not args.overwrite:
            raise SystemExit(f"error: {drawing_path} exists (--overwrite replaces the outputs of a detector)")
        try:
            image = decode_image(path)
        except (ValueError, FileNotFoundError) as error:
            print(f"skipped {path}: {error}", file=sys.stderr)
            failed += 1
            continue
        found = predictor.predict(image)
        images.append({"id": image_id, "file_name": path.name, "height": found.size[0], "width": found.size[1]})
        drawing_path.parent.mkdir(parents=True, exist_ok=True)
        if found.panoptic is not None:
            segmentation, segments = found.panoptic
            png = Path("panoptic") / f"{name}.png"
            (args.output_dir / png).parent.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(panoptic_rgb(segmentation)).save(args.output_dir / png)
            annotations.append(coco_panoptic_annotation(segmentation, segments, image_id, png.name, things))
            drawing = draw_panoptic(image, segmentation, segments, names, colors)
            shown = len(annotations[-1]["segments_info"])
        else:
            results.extend(coco_detection_results(found, image_id))
            drawing = draw_detections(
                image, found.boxes, found.labels, found.scores, names, colors, found.masks, args.threshold
            )
            shown = int((found.scores >= args.threshold).sum())
        drawing.save(drawing_path)
        kind = "segments" if found.panoptic is not None else f"detections with score >= {args.threshold}"
        print(f"{path} -> {drawing_path.name}: {shown} {kind} ({len(found.scores)} detections)")
    categories = [{"id": i, "name": n, "isthing": int(i < things)} for i, n in enumerate(names)]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "images.json").write_text(json.dumps({"images": images, "categories": categories}) + "\n")
    if predictor.is_panoptic:
        panoptic = {"images": images, "categories": categories, "annotations": annotations}
        (args.output_dir / "panoptic.json").write_text(json.dumps(panoptic) + "\n")
        written = "panoptic.json and panoptic/*.png"
    else:
        (args.output_dir / "results.json").write_text(json.dumps(results) + "\n")
        written = f"results.json ({len(results)} detections)"
    summary = f"wrote {written}, images.json and {len(images)} drawings to {args.output_dir}"
    print(summary + (f"; {failed} unreadable" if failed else ""))
    return 1 if failed and not images else 0


# ---------------------------------------------------------------------------------------------------------------------
# fapn-create-model
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class CreateModelArguments:
    """`fapn-create-model`: builds a preset of any family and writes a Hub-ready folder (config, safetensors
    weights, processor config, remote code).

    The folder loads with its family's Auto class (`AutoModelForSemanticSegmentation` for FaPN,
    `AutoModelForUniversalSegmentation` for MaskFormer + FaPN) after `import fapn_hf`, or with
    `trust_remote_code=True` without it, and with `pipeline("image-segmentation", model=folder)`.
    The command reloads what it wrote and checks that the reloaded model reproduces the original's outputs."""

    output_dir: Path = field(metadata=_help("folder to write (created if missing)"))
    preset: str = field(default="fapn-r50", metadata=_help("model preset", choices=sorted(all_presets())))
    labels: str | None = field(
        default=None,
        metadata=_help(
            "label set: 'cityscapes', 'ade20k', 'cocostuff', or comma-separated class names (e.g. "
            "'background,road,car'); default: the preset's own (cityscapes for the semantic FPN presets)"
        ),
    )
    pretrained_backbone: bool = field(
        default=False,
        metadata=_help("start from timm's ImageNet weights (downloads them unless they are in the Hugging Face cache)"),
    )
    backbone_weights: Path | None = field(
        default=None, metadata=_help("local timm checkpoint to load into the backbone")
    )
    seed: int = field(default=0, metadata=_help("seed of the random initialisation"))


def _parse_labels(value: str) -> str | list[str]:
    """A label set's name, or comma-separated class names as a list."""
    return value if "," not in value else [name.strip() for name in value.split(",") if name.strip()]


def create_model_main(argv: Sequence[str] | None = None) -> int:
    """`fapn-create-model`: writes the preset's folder and checks that it reloads to the same model."""
    args = parse_arguments(
        CreateModelArguments, argv, "fapn-create-model", inspect.cleandoc(CreateModelArguments.__doc__)
    )
    torch.manual_seed(args.seed)
    family = family_of_preset(args.preset)
    labels = _parse_labels(args.labels) if args.labels else None  # None: the preset's own label set
    started = time.perf_counter()
    if args.backbone_weights is not None and not args.backbone_weights.is_file():
        raise SystemExit(f"error: --backbone_weights: no such file: {args.backbone_weights}")
    with user_errors(ValueError):
        config = family.preset_config(args.preset, labels)
        processor = family.preset_image_processor(args.preset, labels)
    model_class = family.head_class
    if args.pretrained_backbone or args.backbone_weights:
        # The explicit step that loads timm's weights (a constructor never does).
        weights = str(args.backbone_weights) if args.backbone_weights else None
        model = model_class.from_pretrained_backbone(config, weights).eval()
    else:
        model = model_class(config).eval()

    args.output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)

    # Reload and check that the folder reproduces the model.
    reloaded = model_class.from_pretrained(args.output_dir).eval()
    probe = torch.randn(1, 3, 96, 160)
    with torch.inference_mode():
        difference = (model(probe)[0] - reloaded(probe)[0]).abs().max().item()
    if difference > 1e-4:
        raise SystemExit(f"error: the reloaded model differs from the original (max |logit diff| = {difference:.3g})")

    num_parameters = sum(p.numel() for p in model.parameters()) / 1e6
    pretrained = bool(args.pretrained_backbone or args.backbone_weights)
    print(f"fapn_hf {__version__}: {args.preset}, {config.num_labels} labels, {num_parameters:.2f} M params")
    print(f"backbone: {config.backbone_config.backbone}, pretrained: {pretrained}")
    print(f"wrote {args.output_dir}/ in {time.perf_counter() - started:.1f} s:")
    for path in sorted(args.output_dir.iterdir()):
        if path.is_file():
            print(f"  {path.name:28s} {path.stat().st_size / 1e6:9.2f} MB")
    print(f"reload check: max |output difference| {difference:.1e}")
    print(f'load it with: {family.head_auto_class}.from_pretrained("{args.output_dir}", trust_remote_code=True)')
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# fapn-push
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PushArguments:
    """`fapn-push`: uploads a FaPN model folder to the Hugging Face Hub: safetensors weights, config with auto_map,
    remote code, preprocessor config and a model card generated from the config and metrics.json (or the folder's
    own README.md with --keep_card).

    `--dry_run` prints exactly what would be uploaded and touches no network; the repo id is checked either way. The
    token (checked before anything is uploaded) comes from the usual huggingface_hub places (`hf auth login`, HF_TOKEN)
    or `--token`. The local folder is never modified."""

    model_dir: Path = field(metadata=_help("folder written by fapn-train or fapn-create-model"))
    repo_id: str = field(metadata=_help("Hub model repo, ORG/NAME"))
    private: bool = field(default=False, metadata=_help("create the repo as private"))
    revision: str | None = field(default=None, metadata=_help("branch to push to (created if missing)"))
    token: str | None = field(default=None, metadata=_help("Hub token (default: the logged-in one or HF_TOKEN)"))
    keep_card: bool = field(default=False, metadata=_help("upload the folder's README.md as the card"))
    dry_run: bool = field(default=False, metadata=_help("print what would be uploaded; no network"))
    onnx: bool = field(default=False, metadata=_help("also upload model.onnx (exported if the folder has none)"))


def push_main(argv: Sequence[str] | None = None) -> int:
    """`fapn-push`: checks the folder, the repo id and the token, then uploads (`fapn_hf.hub.push_folder`)."""
    args = parse_arguments(PushArguments, argv, "fapn-push", inspect.cleandoc(PushArguments.__doc__))
    with user_errors(FileNotFoundError, ValueError):
        plan = plan_upload(args.model_dir, repo_id=args.repo_id, keep_card=args.keep_card, onnx=args.onnx)
    token = args.token
    if not args.dry_run:
        with user_errors(PermissionError):
            token = require_token(args.token)
    target = f"{args.repo_id}" + (f"@{args.revision}" if args.revision else "")
    print(f"{'would upload' if args.dry_run else 'uploading'} to {target} ({'private' if args.private else 'public'})")
    print(plan.describe())
    if args.dry_run:
        return 0
    with user_errors(PermissionError, ConnectionError):
        url = push_folder(plan, args.repo_id, private=args.private, revision=args.revision, token=token)
    print(f"uploaded: {url}")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# fapn-convert
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ConvertArguments:
    """`fapn-convert`: converts the authors' detectron2 checkpoint into a Hub-ready FaPN folder whose model gives the
    original outputs (see `fapn_hf.hub.conversion` for what it checks and writes)."""

    checkpoint: Path = field(metadata=_help("the original detectron2 .pth or .pkl file"))
    model: str = field(metadata=_help("which original model", choices=sorted(original_models())))
    output_dir: Path = field(metadata=_help("folder to write (created if missing)"))
    trust_pickle: bool = field(
        default=False,
        metadata=_help(
            "load a .pth that torch.load(weights_only=True) refuses with full pickle (runs code from the file)"
        ),
    )
    not_release: bool = field(
        default=False,
        metadata=_help("the checkpoint is not the authors' released file: the card quotes no reported figures"),
    )


def convert_main(argv: Sequence[str] | None = None) -> int:
    """`fapn-convert`: runs `fapn_hf.hub.conversion.convert_checkpoint` and prints what it wrote."""
    models = "\n".join(f"  {name:32s} {m.description}" for name, m in original_models().items())
    description = f"{inspect.cleandoc(ConvertArguments.__doc__)}\n\nmodels:\n{models}"
    args = parse_arguments(ConvertArguments, argv, "fapn-convert", description)
    with user_errors(ValueError, FileNotFoundError):
        result = convert_checkpoint(
            args.checkpoint, args.model, args.output_dir, args.trust_pickle, from_release=not args.not_release
        )
    print(f"{result.model_name}: {result.num_tensors} tensors from {args.checkpoint}")
    print(f"source sha256 {result.checkpoint_sha256}")
    print(f"rename table: {result.num_rename_rules} rules; every original tensor consumed, every model tensor filled")
    print(f"wrote {result.output_dir}/:")
    for path in sorted(result.output_dir.iterdir()):
        if path.is_file():
            print(f"  {path.name:28s} {path.stat().st_size / 1e6:9.2f} MB")
    for reported in result.record["reported"]:
        print(f"card quotes the authors' {reported['metric']} {reported['value']} on {reported['dataset']} (reported)")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# fapn-export-onnx
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ExportOnnxArguments:
    """`fapn-export-onnx MODEL_DIR`: writes MODEL_DIR/model.onnx for the model saved there and verifies it with
    onnxruntime (see `fapn_hf.export.onnx.export_onnx`)."""

    output: Path | None = field(default=None, metadata=_help("file to write (default: MODEL_DIR/model.onnx)"))
    opset: int = field(default=DEFAULT_OPSET, metadata=_help("ONNX opset (19: the first with DeformConv)"))
    no_verify: bool = field(default=False, metadata=_help("skip the onnxruntime comparison"))
    model_dir: Path = field(
        default=Path(),
        init=False,
        metadata=_help("a saved FaPN model folder (config.json + model.safetensors)", type=Path),
    )


def export_onnx_main(argv: Sequence[str] | None = None) -> int:
    """`fapn-export-onnx`: exports (and verifies) the folder's model as ONNX."""
    args = parse_arguments(ExportOnnxArguments, argv, "fapn-export-onnx", inspect.cleandoc(ExportOnnxArguments.__doc__))
    with user_errors(FileNotFoundError, OnnxVerificationError, ImportError, ValueError):
        model = load_model(str(args.model_dir))
        path = export_onnx(model, args.output or args.model_dir, opset=args.opset, verify=not args.no_verify)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)" + ("" if args.no_verify else ", verified"))
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# fapn-benchmark
# ---------------------------------------------------------------------------------------------------------------------


def benchmark_main(argv: Sequence[str] | None = None) -> int:
    """`fapn-benchmark`: FaPN vs FPN, the pure-PyTorch deformable convolution vs torchvision's, runtimes, and the
    speed targets (`fapn_hf.benchmark.run_benchmark`; arguments: `BenchmarkArguments`)."""
    # Imported here: torch.utils.benchmark (and its C++ extension probe, which warns without CUDA) only for this.
    from ..benchmark.run import BenchmarkArguments, run_benchmark
    from ..benchmark.run import __doc__ as benchmark_doc

    description = benchmark_doc.split("\n\n")[0]
    args = parse_arguments(BenchmarkArguments, argv, "fapn-benchmark", description)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    run_benchmark(args)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# fapn-build-space
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class BuildSpaceArguments:
    """`fapn-build-space`: builds the folder of a Hugging Face Space that serves a FaPN model
    (see `fapn_hf.space.build_space`).

        fapn-build-space --model_id ORG/fapn-r18-demo --output_dir outputs/space --model_path outputs/demo
        hf upload ORG/fapn-demo outputs/space --repo-type space       # publish it

    The folder holds app.py, README.md (Space front matter and API), requirements.txt (registry packages, pinned),
    the fapn_hf package and examples/: it runs as it is, with `pip install -r requirements.txt && python app.py`."""

    model_id: str = field(metadata=_help("the model repo the Space serves, ORG/NAME"))
    output_dir: Path = field(metadata=_help("new or empty folder to write"))
    model_path: str | None = field(default=None, metadata=_help("local copy of the model (default: the Hub id)"))
    examples: list[str] | None = field(default=None, metadata=_help("example images (default: demo images)"))
    num_examples: int = field(default=3, metadata=_help("demo examples to choose"))
    title: str | None = field(
        default=None, metadata=_help("the Space's title (default: by the model's task, 'FaPN semantic segmentation')")
    )
    short_description: str | None = field(
        default=None, metadata=_help(f"at most 60 characters (default: by the task, {DEFAULT_SHORT_DESCRIPTION!r})")
    )
    gpu: bool = field(default=False, metadata=_help("a GPU Space: CUDA torch (default: PyTorch's CPU-only build)"))


def build_space_main(argv: Sequence[str] | None = None) -> int:
    """`fapn-build-space`: writes the Space folder and describes it."""
    args = parse_arguments(BuildSpaceArguments, argv, "fapn-build-space", inspect.cleandoc(BuildSpaceArguments.__doc__))
    with user_errors(ValueError, FileNotFoundError, ModuleNotFoundError, OSError):
        space = build_space(
            args.model_id,
            args.output_dir,
            model_path=args.model_path,
            examples=args.examples,
            num_examples=args.num_examples,
            title=args.title,
            short_description=args.short_description,
            gpu=args.gpu,
        )
    print(space.describe())
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# python -m fapn_hf COMMAND
# ---------------------------------------------------------------------------------------------------------------------


def _benchmark_data_main(argv: Sequence[str] | None = None) -> int:
    # Imported on use, as the training stack: the input-pipeline benchmark needs datasets and the augmentation.
    return import_module("fapn_hf.benchmark.data_pipeline").main(None if argv is None else list(argv))


def _train_main(argv: Sequence[str] | None = None) -> int:
    # Imported on use: the training stack (Trainer, accelerate) is heavy and only `train` needs it.
    return import_module("fapn_hf.training.run").main(None if argv is None else list(argv))


COMMANDS: dict[str, tuple[Callable[[Sequence[str] | None], int], str]] = {
    "train": (_train_main, "train FaPN with the Trainer from a recipe (fapn-train)"),
    "evaluate": (evaluate_main, "mIoU and boundary mIoU of a model on a data set (fapn-evaluate)"),
    "predict": (predict_main, "label maps and overlays of images (fapn-predict)"),
    "create-model": (create_model_main, "write a preset's Hub-ready folder (fapn-create-model)"),
    "push": (push_main, "upload a model folder to the Hub (fapn-push)"),
    "convert": (convert_main, "convert the authors' detectron2 checkpoint (fapn-convert)"),
    "export-onnx": (export_onnx_main, "export a model folder as ONNX (fapn-export-onnx)"),
    "benchmark": (benchmark_main, "FaPN vs FPN and DCN speed and memory (fapn-benchmark)"),
    "benchmark-data": (_benchmark_data_main, "input-pipeline samples/s per data-loader worker, per data set layout"),
    "build-space": (build_space_main, "write a Hugging Face Space folder (fapn-build-space)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fapn_hf COMMAND [ARGS]`: runs one command; `python -m fapn_hf COMMAND --help` lists its flags."""
    argv = sys.argv[1:] if argv is None else list(argv)
    listing = "\n".join(f"  {name:14s} {text}" for name, (_, text) in COMMANDS.items())
    usage = f"usage: python -m fapn_hf COMMAND [ARGS]\n\ncommands:\n{listing}\n\n{EPILOG}"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        raise SystemExit(f"error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
    command, _ = COMMANDS[argv[0]]
    return command(argv[1:])


__all__ = [
    "COMMANDS",
    "BuildSpaceArguments",
    "ConvertArguments",
    "CreateModelArguments",
    "EvaluateArguments",
    "ExportOnnxArguments",
    "PredictArguments",
    "PushArguments",
    "benchmark_main",
    "build_space_main",
    "convert_main",
    "create_model_main",
    "evaluate_main",
    "export_onnx_main",
    "main",
    "parse_arguments",
    "predict_main",
    "push_main",
    "user_errors",
]
