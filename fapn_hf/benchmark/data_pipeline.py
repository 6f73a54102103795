"""Input-pipeline throughput: decoded-and-augmented samples per second per data-loader worker, for each folder layout
at its real image size, split into reading, decoding, augmenting and processing, and how many workers keep one GPU
fed at the paper's batch size.

A data-loader worker is one process with one intra-op thread (PyTorch sets one in its workers), so one worker's rate
is what one core gives. Each layout's files are written once at their real size and format into a folder with the
layout's real names (a synthetic scene: flat regions with gradients and sensor-like noise, which compresses as a
photograph does: a 1024x2048 Cityscapes PNG of about 2.3 MB), loaded through `load_segmentation_dataset` (its
index), and timed through the training path:

- read: the image and label files' bytes (from the page cache: a cold disk adds its own latency);
- decode: the image (`decode_image`'s rules) and the label (PNG, or `.mat`), the label mapping and the value check;
- augment: the recipe's `TrainAugmentation` (random scale, category-capped crop, flip, photometric distortion, pad);
- process: the image processor's rescale and normalisation of the crop to `pixel_values`;
- end to end: `SegmentationDataset[i]` reading the folder, as the Trainer's data loader calls it.

Every figure is the mean over the samples and augmentation seeds of one round (a random scale makes some samples
costlier), and the median over `--rounds` rounds. A GPU consumes `batch / step_seconds` samples per second; the
workers it needs are that rate over one worker's end-to-end rate, rounded up. With `--gpu_step_seconds` the step
time is given; without, the table gives the workers for several step times (measure yours with the Trainer's
`train_steps_per_second`).

    python -m fapn_hf.benchmark.data_pipeline                            # every layout, real sizes
    python -m fapn_hf benchmark-data --layouts cityscapes --rounds 5 --output outputs/data_pipeline.json
    python -m fapn_hf benchmark-data --gpu_step_seconds 0.4              # the workers one GPU needs at 0.4 s/step
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

# Seconds per training step of one GPU for which the table states the workers needed, when none is given.
DEFAULT_STEP_SECONDS = (0.25, 0.5, 1.0)
PHASES = ("read", "decode", "augment", "process")


@dataclass(frozen=True)
class LayoutCase:
    """One layout at its real size with its recipe's augmentation and per-GPU batch."""

    name: str
    title: str
    height: int
    width: int
    image_format: str  # "PNG" or "JPEG"
    label_kind: str  # "png", "palette" or "mat"
    crop_size: tuple[int, int]
    scale_range: tuple[float, float]
    cat_max_ratio: float
    batch_per_gpu: int
    preset: str
    recipe: str


CASES: tuple[LayoutCase, ...] = (
    # recipes/cityscapes_fapn_r50_pointrend.yaml: batch 32 over 8 GPUs.
    LayoutCase("cityscapes", "Cityscapes", 1024, 2048, "PNG", "png", (512, 1024), (0.5, 2.0), 0.75, 4,
               "fapn-r50-pointrend", "cityscapes_fapn_r50_pointrend.yaml"),
    # recipes/ade20k_fapn_r50.yaml: batch 16 over 8 GPUs; ADE20K images are mostly 512 px on the short side.
    LayoutCase("ade20k", "ADE20K", 512, 683, "JPEG", "png", (512, 512), (0.5, 2.0), 0.75, 2,
               "fapn-r50", "ade20k_fapn_r50.yaml"),
    # recipes/cocostuff_maskformer_fapn_r101.yaml: batch 32 over 8 GPUs; COCO images are mostly 640x480.
    LayoutCase("cocostuff10k", "COCO-Stuff-10K", 480, 640, "JPEG", "mat", (640, 640), (0.5, 1.5), 1.0, 4,
               "maskformer-fapn-r101-cocostuff", "cocostuff_maskformer_fapn_r101.yaml"),
    LayoutCase("cocostuff164k", "COCO-Stuff-164K", 480, 640, "JPEG", "png", (640, 640), (0.5, 1.5), 1.0, 4,
               "maskformer-fapn-r101-cocostuff", "cocostuff_maskformer_fapn_r101.yaml"),
    # recipes/voc_aug_fapn_r50.yaml: batch 16 over 4 GPUs; VOC images are at most 500 px.
    LayoutCase("voc", "Pascal VOC 2012", 375, 500, "JPEG", "palette", (512, 512), (0.68, 2.73), 0.75, 4,
               "fapn-r50", "voc_aug_fapn_r50.yaml"),
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Synthetic files with the real names
# ----------------------------------------------------------------------------------------------------------------


def synthetic_scene(height: int, width: int, seed: int, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image `(H, W, 3)` uint8 and its raw label map `(H, W)`: flat regions (one class each) with smooth
    shading and Gaussian noise of 1 grey level, which PNG and JPEG compress about as they compress photographs."""
    rng = np.random.default_rng(seed)
    cells = max(2, height // 24), max(2, width // 24)
    regions = rng.integers(0, len(classes), cells).astype(np.uint8)
    ids = np.asarray(PIL.Image.fromarray(regions).resize((width, height), PIL.Image.NEAREST))
    colours = rng.integers(30, 225, (len(classes), 3)).astype(np.float32)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    shading = 25 * np.sin(cols[..., None] / 97 + np.arange(3)) * np.cos(rows[..., None] / 61)
    image = colours[ids] + shading + rng.normal(0, 1.0, (height, width, 3)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), np.asarray(classes, dtype=np.uint16)[ids]


def _save_image(image: np.ndarray, path: Path, image_format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(image).save(path, image_format, **({"quality": 90} if image_format == "JPEG" else {}))


def _save_label(labels: np.ndarray, path: Path, kind: str) -> None:
    import scipy.io

    from ..labels import voc_palette

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "mat":
        scipy.io.savemat(path, {"S": labels.astype(np.uint16)}, do_compression=True)
        return
    label_image = PIL.Image.fromarray(labels.astype(np.uint8))
    if kind == "palette":
        label_image.putpalette(voc_palette().flatten().tolist())
    label_image.save(path)


# Raw label values each layout's files hold (a few classes of each data set, unlabelled included).
_RAW_CLASSES = {
    "cityscapes": (0, 7, 8, 11, 17, 21, 23, 24, 26),
    "ade20k": (0, 1, 2, 3, 4, 7, 13, 21),
    "cocostuff10k": (255, 0, 2, 91, 95, 123, 148, 156),  # as the stuffthingmaps: category id - 1, 255 unlabelled
    "cocostuff164k": (255, 0, 2, 91, 95, 123, 148, 156),
    "voc": (0, 1, 7, 15, 255),
}


def write_layout(case: LayoutCase, root: Path, samples: int, scale: float = 1.0) -> Path:
    """Writes `samples` training samples of `case` (and one validation sample) under `root` with the layout's real
    file names; returns the folder to pass as `--dataset`. `scale` shrinks the images (smoke tests)."""
    height, width = max(8, round(case.height * scale)), max(8, round(case.width * scale))
    classes = _RAW_CLASSES[case.name]
    names = [f"{index:06d}" for index in range(samples + 1)]
    for index, name in enumerate(names):
        image, labels = synthetic_scene(height, width, index, classes)
        train = index < samples
        if case.name == "cityscapes":
            split, city = ("train", "aachen") if train else ("val", "frankfurt")
            stem = f"{city}_000000_{name}"
            _save_image(image, root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", "PNG")
            _save_label(labels, root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", "png")
        elif case.name == "ade20k":
            split, prefix = ("training", "ADE_train") if train else ("validation", "ADE_val")
            base = root / "ADEChallengeData2016"
            _save_image(image, base / "images" / split / f"{prefix}_{name}.jpg", "JPEG")
            _save_label(labels, base / "annotations" / split / f"{prefix}_{name}.png", "png")
        elif case.name == "cocostuff10k":
            stem = f"COCO_train2014_{name}"
            (root / "imageLists").mkdir(parents=True, exist_ok=True)
            _save_image(image, root / "images" / f"{stem}.jpg", "JPEG")
            s = np.where(labels == 255, 0, labels.astype(np.int64) + 1)  # S: the category id (raw + 1), 0 unlabelled
            _save_label(s, root / "annotations" / f"{stem}.mat", "mat")
            with (root / "imageLists" / ("train.txt" if train else "test.txt")).open("a") as listed:
                listed.write(stem + "\n")
        elif case.name == "cocostuff164k":
            split = "train2017" if train else "val2017"
            _save_image(image, root / "images" / split / f"{name}.jpg", "JPEG")
            _save_label(labels, root / "stuffthingmaps_trainval2017" / split / f"{name}.png", "png")
        elif case.name == "voc":
            stem = f"2007_{name}"
            _save_image(image, root / "JPEGImages" / f"{stem}.jpg", "JPEG")
            _save_label(labels, root / "SegmentationClass" / f"{stem}.png", "palette")
            lists = root / "ImageSets" / "Segmentation"
            lists.mkdir(parents=True, exist_ok=True)
            with (lists / ("train.txt" if train else "val.txt")).open("a") as listed:
                listed.write(stem + "\n")
        else:
            raise ValueError(f"unknown layout {case.name!r}")
    return root


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


def measure_layout(case: LayoutCase, folder: Path, seeds: int, rounds: int) -> dict[str, Any]:
    """Per-sample seconds of each phase and end to end (`SegmentationDataset[i]`) for `case`'s files in `folder`, on
    the CPU clock and the wall clock: each round's mean over the samples and `seeds` augmentation seeds, the median
    over `rounds` rounds. A worker's rate is one sample per CPU-second (a core of its own)."""
    from ..families import preset_image_processor
    from ..labels import LABEL_SETS
    from ..tasks.semantic.data import LabelSpec, SegmentationDataset, _decode, load_segmentation_dataset
    from ..tasks.semantic.layouts import label_settings
    from ..tasks.semantic.transforms import TrainAugmentation

    started = time.perf_counter()
    splits = load_segmentation_dataset(str(folder))
    index_seconds = time.perf_counter() - started
    rows = splits["train"]
    settings = label_settings(folder)
    spec = LabelSpec(len(LABEL_SETS[settings.labels]), 255, settings.label_mapping, settings.reduce_labels)
    augmentation = TrainAugmentation(case.crop_size, case.scale_range, case.cat_max_ratio)
    # The recipe's family's processor, as training builds it: it rescales and normalises the crops.
    processor = preset_image_processor(settings.labels, case.preset, do_resize=False)
    dataset = SegmentationDataset(rows, spec, augmentation, processor)
    paths = [(row["image"]["path"], row["label"]["path"]) for row in rows]
    dataset[0]  # a first call pays for lazy imports and allocations: not a sample's cost

    steps = (*PHASES, "end to end")
    # Per round: the mean seconds of each step, on the process's CPU clock (one core's work, what a worker costs)
    # and on the wall clock (what it took on this machine, other processes included).
    cpu_rounds: dict[str, list[float]] = {step: [] for step in steps}
    wall_rounds: dict[str, list[float]] = {step: [] for step in steps}
    for round_index in range(rounds):
        cpu_totals, wall_totals, count = dict.fromkeys(steps, 0.0), dict.fromkeys(steps, 0.0), 0
        for index, (image_path, label_path) in enumerate(paths):
            for seed in range(seeds):
                stopwatch = _Stopwatch()
                files = Path(image_path).read_bytes(), Path(label_path).read_bytes()
                stopwatch.lap("read")
                row = {
                    "image": {"path": image_path, "bytes": files[0]},
                    "label": {"path": label_path, "bytes": files[1]},
                }
                image, labels = _decode(row, index, spec)
                stopwatch.lap("decode")
                crop, crop_labels = augmentation(
                    torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(labels), (round_index, seed, index)
                )
                stopwatch.lap("augment")
                processor(images=crop, return_tensors="pt", do_resize=False), crop_labels.long()
                stopwatch.lap("process")
                dataset.set_epoch(round_index * seeds + seed)
                stopwatch.lap(None)
                dataset[index]
                stopwatch.lap("end to end")
                for step in steps:
                    cpu_totals[step] += stopwatch.cpu[step]
                    wall_totals[step] += stopwatch.wall[step]
                count += 1
        for step in steps:
            cpu_rounds[step].append(cpu_totals[step] / count)
            wall_rounds[step].append(wall_totals[step] / count)
    cpu = {step: statistics.median(values) for step, values in cpu_rounds.items()}
    wall = {step: statistics.median(values) for step, values in wall_rounds.items()}
    image_bytes = statistics.mean(os.path.getsize(image) for image, _ in paths)
    label_bytes = statistics.mean(os.path.getsize(label) for _, label in paths)
    return {
        "layout": case.name,
        "title": case.title,
        "image_size": [int(v) for v in np.asarray(PIL.Image.open(paths[0][0]).size)[::-1]],
        "image_format": case.image_format,
        "label_format": "mat" if case.label_kind == "mat" else "png",
        "image_megabytes": image_bytes / 1e6,
        "label_kilobytes": label_bytes / 1e3,
        "crop_size": list(case.crop_size),
        "scale_range": list(case.scale_range),
        "cat_max_ratio": case.cat_max_ratio,
        "batch_per_gpu": case.batch_per_gpu,
        "recipe": case.recipe,
        "samples": len(paths),
        "seeds": seeds,
        "rounds": rounds,
        "index_seconds": index_seconds,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "rounds_cpu_end_to_end": cpu_rounds["end to end"],
        "rounds_wall_end_to_end": wall_rounds["end to end"],
        # One worker on a core of its own: one sample per CPU-second of work.
        "samples_per_second": 1.0 / cpu["end to end"],
        "samples_per_second_wall": 1.0 / wall["end to end"],
    }


class _Stopwatch:
    """Seconds between laps on the process CPU clock and the wall clock (`lap(None)` restarts without recording)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self._last = time.process_time(), time.perf_counter()

    def lap(self, name: str | None) -> None:
        now = time.process_time(), time.perf_counter()
        if name is not None:
            self.cpu[name] = now[0] - self._last[0]
            self.wall[name] = now[1] - self._last[1]
        self._last = now


def workers_needed(batch_per_gpu: int, step_seconds: float, samples_per_second: float) -> int:
    """Data-loader workers that keep one GPU fed: its `batch / step_seconds` samples per second over one worker's
    rate, rounded up."""
    return math.ceil(batch_per_gpu / step_seconds / samples_per_second)


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """The machine and what else ran on it (a shared machine slows every figure)."""
    model = next(
        (line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        # PNG files decode through libspng when pyspng is installed (`image_decoding.png_pixels`), else through PIL.
        "pyspng": _version_of("pyspng"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _version_of(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def format_report(results: list[dict[str, Any]], step_seconds: Sequence[float], info: dict[str, Any]) -> str:
    """The throughput table (milliseconds per sample by phase, samples per second per worker) and the workers one
    GPU needs at the given step times."""
    steps = " | ".join(f"workers at {s:g} s/step" for s in step_seconds)
    lines = [
        f"machine: {info['cpu']}, {info['cores']} cores, load average {info['load_average']} at the start, "
        f"{info['torch_threads']} torch thread per worker, PNG decoding by "
        f"{'pyspng ' + info['pyspng'] if info.get('pyspng') else 'PIL'}",
        "",
        f"| layout | image | read ms | decode ms | augment ms | process ms | end to end ms | samples/s per worker "
        f"| wall ms | batch/GPU | {steps} |",
        "|" + "---|" * (10 + len(step_seconds)),
    ]
    for result in results:
        ms = {phase: 1000 * value for phase, value in result["cpu_seconds"].items()}
        height, width = result["image_size"]
        workers = " | ".join(
            str(workers_needed(result["batch_per_gpu"], s, result["samples_per_second"])) for s in step_seconds
        )
        lines.append(
            f"| {result['title']} | {height}x{width} {result['image_format']} "
            f"({1000 * result['image_megabytes']:.0f} kB) + "
            f"{result['label_format']} | {ms['read']:.1f} | {ms['decode']:.1f} | {ms['augment']:.1f} | "
            f"{ms['process']:.1f} | {ms['end to end']:.1f} | {result['samples_per_second']:.1f} | "
            f"{1000 * result['wall_seconds']['end to end']:.1f} | {result['batch_per_gpu']} | {workers} |"
        )
    lines.append("")
    lines.append(
        "CPU milliseconds per sample (one worker's work on a core of its own); read + decode + augment + process is "
        "one sample's work step by step, end to end is SegmentationDataset[i] on the folder; wall ms is end to end "
        "on the wall clock of this (possibly shared) machine. Medians over rounds of the mean over samples and seeds."
    )
    return "\n".join(lines)


@dataclass
class DataBenchmarkArguments:
    """`python -m fapn_hf benchmark-data`: input-pipeline throughput per data-loader worker for each layout."""

    layouts: list[str] = field(
        default_factory=lambda: [case.name for case in CASES],
        metadata={"help": f"layouts to measure: {', '.join(case.name for case in CASES)}"},
    )
    samples: int = field(default=4, metadata={"help": "distinct files per layout"})
    seeds: int = field(default=4, metadata={"help": "augmentation seeds per file and round"})
    rounds: int = field(default=3, metadata={"help": "rounds; the median counts"})
    scale: float = field(default=1.0, metadata={"help": "image size factor (below 1: a smoke test, not a figure)"})
    gpu_step_seconds: list[float] | None = field(
        default=None,
        metadata={"help": f"seconds per training step of one GPU (default: the table for {DEFAULT_STEP_SECONDS})"},
    )
    threads: int = field(default=1, metadata={"help": "torch threads (a data-loader worker has 1)"})
    folder: Path | None = field(default=None, metadata={"help": "write the files here and keep them (default: temp)"})
    output: Path | None = field(default=None, metadata={"help": "also write every figure as JSON to this file"})

    def __post_init__(self) -> None:
        known = [case.name for case in CASES]
        unknown = [name for name in self.layouts if name not in known]
        if unknown:
            raise ValueError(f"unknown layouts {unknown}; known: {known}")
        if min(self.samples, self.seeds, self.rounds, self.threads) < 1 or self.scale <= 0:
            raise ValueError("samples, seeds, rounds and threads must be >= 1 and scale > 0")


def run_data_benchmark(args: DataBenchmarkArguments) -> dict[str, Any]:
    """Writes each layout's files, measures them, prints the table and returns (and writes to `args.output`) every
    figure."""
    torch.set_num_threads(args.threads)
    info = environment()
    base = Path(tempfile.mkdtemp(prefix="fapn-data-benchmark-")) if args.folder is None else args.folder
    results = []
    try:
        for case in (case for case in CASES if case.name in args.layouts):
            folder = write_layout(case, base / case.name, args.samples, args.scale)
            results.append(measure_layout(case, folder, args.seeds, args.rounds))
            print(f"{case.title}: {results[-1]['samples_per_second']:.1f} samples/s per worker", file=sys.stderr)
    finally:
        if args.folder is None:
            shutil.rmtree(base, ignore_errors=True)
    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    steps = tuple(args.gpu_step_seconds or DEFAULT_STEP_SECONDS)
    print(format_report(results, steps, info))
    report = {
        "environment": info,
        "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(args).items()},
        "gpu_step_seconds": list(steps),
        "layouts": results,
        "workers_per_gpu": {
            result["layout"]: {
                str(s): workers_needed(result["batch_per_gpu"], s, result["samples_per_second"]) for s in steps
            }
            for result in results
        },
    }
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (`python -m fapn_hf.benchmark.data_pipeline`, `python -m fapn_hf benchmark-data`)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(DataBenchmarkArguments, description=__doc__.split("\n\n")[0])
    try:
        (args,) = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
    run_data_benchmark(args)
    return 0


__all__ = [
    "CASES",
    "DataBenchmarkArguments",
    "LayoutCase",
    "main",
    "measure_layout",
    "run_data_benchmark",
    "synthetic_scene",
    "workers_needed",
    "write_layout",
]

if __name__ == "__main__":
    sys.exit(main())
