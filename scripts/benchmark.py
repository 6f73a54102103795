"""Benchmarks FaPN against its FPN baseline, and the pure-PyTorch deformable convolution against torchvision's.

Everything is measured in one run, on one device, so the printed ratios compare like with like:

1. Model: forward latency (eval mode, `torch.inference_mode()`) and peak memory of FaPN
   (`use_fam=True, use_fsm=True`) and of the FPN baseline on the same code path (`use_fam=False, use_fsm=False`),
   same backbone, plus their parameter counts and the ratios FaPN / FPN.
2. Deformable convolution at FaPN's sizes (256 -> 256 channels, 3x3 kernel, padding 1, 8 deformable groups, with
   mask): forward (under `torch.inference_mode()`) and forward + backward latency and peak memory of
   `fapn_hf.deform_conv2d(..., implementation="torch")` and of `torchvision.ops.deform_conv2d`, plus the speed-up
   torchvision time / torch time (above 1: the pure-PyTorch kernel is faster).

Latency: median and min of `--repeats` timed calls (`time.perf_counter`, CUDA synchronised) after `--warmup`
untimed ones. A case whose timed calls would run past `--max-seconds-per-case` stops early (at least one call);
the `runs` column says how many were timed.

Peak memory: measured on one extra untimed call after the timed ones, as the increase above the level just before
that call (so activations and workspace, not weights and inputs). On CUDA: `torch.cuda.max_memory_allocated`. On
CPU: the peak resident set size, read exactly from `VmHWM` after resetting it through `/proc/self/clear_refs`
where Linux allows it, otherwise sampled every 5 ms from a background thread (psutil, or `VmRSS`). Freed heap memory
is handed back to the OS first (glibc `malloc_trim`), so memory kept by the allocator from earlier calls does not
hide the peak. CPU figures are approximate.

Usage (from the repository root):

    python scripts/benchmark.py                                      # defaults: R50, 1x3x512x1024, cuda if any
    python scripts/benchmark.py --skip-model --dcn-sizes 32x64 --repeats 1   # quick check
    python scripts/benchmark.py --device cpu --threads 2 --json outputs/benchmark.json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

from fapn_hf import FaPNConfig, FaPNForSemanticSegmentation, deform_conv2d
from fapn_hf.deform_conv import resolve_implementation

MIB = 1024 * 1024
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
SAMPLING_INTERVAL_S = 0.005

DCN_CHANNELS = 256
DCN_KERNEL = 3
DCN_PADDING = 1
DCN_GROUPS = 8
DCN_IMPLEMENTATIONS = ("torch", "torchvision")
DCN_PASSES = ("forward", "forward+backward")


# ----------------------------------------------------------------------------------------------------------------
# Arguments and environment
# ----------------------------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """Parses `HxW` (e.g. `64x128`) into `(H, W)`."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a size like 64x128, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Parses a comma-separated list of `HxW` sizes."""
    return [parse_size(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="resnet50", help="timm backbone of both models")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-labels", type=int, default=19)
    parser.add_argument(
        "--deform-conv-implementation",
        default="auto",
        choices=("auto", "torch", "torchvision"),
        help="deformable conv kernel inside the FaPN model (auto: torchvision on CUDA, pure PyTorch elsewhere)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case")
    parser.add_argument(
        "--max-seconds-per-case",
        type=float,
        default=30.0,
        help="stop timing a case once its next call would exceed this (at least one call); 0 disables",
    )
    parser.add_argument("--dcn-sizes", type=parse_sizes, default=parse_sizes("64x128,128x256"), help="HxW list")
    parser.add_argument("--dcn-batch-size", type=int, default=1)
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--skip-dcn", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write every figure as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def cpu_model_name() -> str:
    """The CPU model from /proc/cpuinfo, or what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """A human-readable name of the device."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def synchronize(device: torch.device) -> None:
    """Waits for queued kernels, so that wall-clock time covers them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------------------------


def read_status_kib(field_name: str) -> int:
    """A `kB` field of /proc/self/status (e.g. `VmRSS`), in KiB."""
    match = re.search(rf"^{field_name}:\s+(\d+)\s+kB", PROC_STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{field_name} not found in {PROC_STATUS}")
    return int(match.group(1))


def release_freed_memory() -> None:
    """Collects garbage and asks glibc to return freed heap pages to the OS, so that RSS reflects live memory."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


class PeakMemoryMeter:
    """Measures the peak memory increase of the code between `start()` and `stop()`; this base measures nothing."""

    description = "not measurable"

    def start(self) -> None:
        """Records the starting level."""

    def stop(self) -> int | None:
        """Returns the peak increase in bytes since `start()`, or None."""
        return None


class CudaPeakMemoryMeter(PeakMemoryMeter):
    """Peak of `torch.cuda.max_memory_allocated` above the memory allocated at `start()`."""

    description = "CUDA max_memory_allocated increase"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = 0

    def start(self) -> None:
        synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = torch.cuda.memory_allocated(self.device)

    def stop(self) -> int | None:
        synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - self.baseline


class HighWaterMarkMeter(PeakMemoryMeter):
    """Exact peak RSS from the kernel's `VmHWM`, reset at `start()` through /proc/self/clear_refs."""

    description = "CPU peak RSS increase (VmHWM, reset via /proc/self/clear_refs)"

    def __init__(self) -> None:
        self.baseline_kib = 0

    def start(self) -> None:
        release_freed_memory()
        PROC_CLEAR_REFS.write_text("5")
        self.baseline_kib = read_status_kib("VmRSS")

    def stop(self) -> int | None:
        return max(0, read_status_kib("VmHWM") - self.baseline_kib) * 1024


class SamplingMeter(PeakMemoryMeter):
    """Peak RSS sampled every few milliseconds by a background thread; misses spikes shorter than the interval."""

    def __init__(self, read_rss_bytes: Callable[[], int], source: str) -> None:
        self.read_rss_bytes = read_rss_bytes
        self.description = f"CPU peak RSS increase ({source} sampled every 5 ms)"
        self.baseline = 0
        self.peak = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._done.wait(SAMPLING_INTERVAL_S):
            self.peak = max(self.peak, self.read_rss_bytes())

    def start(self) -> None:
        release_freed_memory()
        self.baseline = self.peak = self.read_rss_bytes()
        self._done.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> int | None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.read_rss_bytes())
        return self.peak - self.baseline


def high_water_mark_reset_works() -> bool:
    """Checks that writing 5 to /proc/self/clear_refs lowers VmHWM back to the current RSS."""
    size = 64 * MIB
    try:
        blob = b"\x01" * size  # touched pages, so VmHWM rises by `size`
        del blob
        release_freed_memory()
        before = read_status_kib("VmHWM")
        PROC_CLEAR_REFS.write_text("5")
        after, rss = read_status_kib("VmHWM"), read_status_kib("VmRSS")
    except OSError:
        return False
    return before - after >= size // 2 // 1024 and after <= rss + 1024


def select_memory_meter(device: torch.device) -> PeakMemoryMeter:
    """The most precise peak-memory meter available for `device`."""
    if device.type == "cuda":
        return CudaPeakMemoryMeter(device)
    if device.type != "cpu":
        return PeakMemoryMeter()
    if high_water_mark_reset_works():
        return HighWaterMarkMeter()
    if importlib.util.find_spec("psutil") is not None:
        import psutil

        process = psutil.Process()
        return SamplingMeter(lambda: process.memory_info().rss, "psutil RSS")
    if PROC_STATUS.exists():
        return SamplingMeter(lambda: read_status_kib("VmRSS") * 1024, "/proc/self/status VmRSS")
    return PeakMemoryMeter()


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """Timed calls and peak memory of one benchmark case."""

    times_s: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures, times in milliseconds and memory in MiB."""
        memory = None if self.peak_memory_bytes is None else self.peak_memory_bytes / MIB
        return {
            "median_ms": self.median_s * 1e3,
            "min_ms": self.min_s * 1e3,
            "times_ms": [t * 1e3 for t in self.times_s],
            "runs": len(self.times_s),
            "peak_memory_mib": memory,
        }


@dataclass
class BenchmarkSettings:
    """How each case is run: device, warm-up and timed calls, time budget, memory meter."""

    device: torch.device
    warmup: int
    repeats: int
    max_seconds_per_case: float
    meter: PeakMemoryMeter


def measure(
    fn: Callable[[], Any], settings: BenchmarkSettings, before: Callable[[], None] | None = None
) -> Measurement:
    """Times `fn` (after warm-up calls) and then measures its peak memory on one more call.

    `before`, if given, runs ahead of every call outside the timed region (e.g. to clear gradients).
    """
    device = settings.device
    result = Measurement()

    def call() -> float:
        if before is not None:
            before()
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - start

    for _ in range(settings.warmup):
        call()
    budget = settings.max_seconds_per_case
    while len(result.times_s) < settings.repeats:
        result.times_s.append(call())
        if budget > 0 and sum(result.times_s) + statistics.median(result.times_s) > budget:
            break

    if before is not None:
        before()
    settings.meter.start()
    fn()
    result.peak_memory_bytes = settings.meter.stop()
    return result


# ----------------------------------------------------------------------------------------------------------------
# Model benchmark
# ----------------------------------------------------------------------------------------------------------------


def build_model(args: argparse.Namespace, device: torch.device, feature_aligned: bool) -> torch.nn.Module:
    """FaPN (`feature_aligned=True`) or the FPN baseline on the same code path, in eval mode on `device`."""
    torch.manual_seed(args.seed)
    config = FaPNConfig(
        backbone=args.backbone,
        num_labels=args.num_labels,
        use_fam=feature_aligned,
        use_fsm=feature_aligned,
        deform_conv_implementation=args.deform_conv_implementation,
    )
    return FaPNForSemanticSegmentation(config).eval().to(device)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of `model`."""
    return sum(p.numel() for p in model.parameters())


def benchmark_models(args: argparse.Namespace, settings: BenchmarkSettings) -> dict[str, Any]:
    """Forward latency, peak memory and parameters of FPN and FaPN, and the ratios FaPN / FPN."""
    device = settings.device
    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = torch.randn(args.batch_size, 3, args.height, args.width, generator=generator).to(device)
    results: dict[str, Any] = {}
    for name, feature_aligned in (("FPN", False), ("FaPN", True)):
        model = build_model(args, device, feature_aligned)
        with torch.inference_mode():
            measurement = measure(lambda model=model: model(pixel_values), settings)
        results[name] = {"parameters": count_parameters(model), **measurement.to_dict()}
        del model
        release_freed_memory()
    fpn, fapn = results["FPN"], results["FaPN"]
    results["ratio"] = {key: safe_ratio(fapn[key], fpn[key]) for key in ("parameters", "median_ms", "min_ms")}
    results["ratio"]["peak_memory_mib"] = safe_ratio(fapn["peak_memory_mib"], fpn["peak_memory_mib"])
    results["deform_conv_implementation"] = resolve_implementation(args.deform_conv_implementation, device)
    return results


def safe_ratio(numerator: float | None, denominator: float | None) -> float | None:
    """`numerator / denominator`, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


# ----------------------------------------------------------------------------------------------------------------
# Deformable convolution benchmark
# ----------------------------------------------------------------------------------------------------------------


def make_dcn_inputs(
    size: tuple[int, int], batch: int, device: torch.device, seed: int, requires_grad: bool
) -> dict[str, torch.Tensor]:
    """Random input, offsets (a few pixels), mask, weight, bias and output gradient of a FaPN-sized DCN."""
    height, width = size
    taps = DCN_KERNEL * DCN_KERNEL
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(device)

    tensors = {
        "input": rand(batch, DCN_CHANNELS, height, width),
        "offset": rand(batch, 2 * DCN_GROUPS * taps, height, width, scale=2.0),
        "mask": rand(batch, DCN_GROUPS * taps, height, width).sigmoid(),
        "weight": rand(DCN_CHANNELS, DCN_CHANNELS, DCN_KERNEL, DCN_KERNEL, scale=(DCN_CHANNELS * taps) ** -0.5),
        "bias": rand(DCN_CHANNELS, scale=0.1),
    }
    for tensor in tensors.values():
        tensor.requires_grad_(requires_grad)
    tensors["grad_output"] = rand(batch, DCN_CHANNELS, height, width)
    return tensors


def dcn_forward(implementation: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """One deformable convolution with `implementation` ("torch" or "torchvision")."""
    args = (tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"])
    if implementation == "torchvision":
        return torchvision_deform_conv2d(*args, padding=DCN_PADDING, mask=tensors["mask"])
    return deform_conv2d(*args, padding=DCN_PADDING, mask=tensors["mask"], implementation="torch")


def benchmark_dcn_case(
    implementation: str, pass_name: str, size: tuple[int, int], args: argparse.Namespace, settings: BenchmarkSettings
) -> Measurement:
    """Forward (inference mode) or forward + backward of one implementation at one size."""
    backward = pass_name == "forward+backward"
    tensors = make_dcn_inputs(size, args.dcn_batch_size, settings.device, args.seed, requires_grad=backward)
    if not backward:
        with torch.inference_mode():
            return measure(lambda: dcn_forward(implementation, tensors), settings)

    leaves = [t for name, t in tensors.items() if name != "grad_output"]

    def clear_gradients() -> None:
        for tensor in leaves:
            tensor.grad = None

    def forward_backward() -> None:
        dcn_forward(implementation, tensors).backward(tensors["grad_output"])

    return measure(forward_backward, settings, before=clear_gradients)


def benchmark_dcn(args: argparse.Namespace, settings: BenchmarkSettings) -> list[dict[str, Any]]:
    """Every (size, pass, implementation) case, with the speed-up torchvision / torch per (size, pass)."""
    rows = []
    for size in args.dcn_sizes:
        for pass_name in DCN_PASSES:
            row: dict[str, Any] = {"size": f"{size[0]}x{size[1]}", "pass": pass_name}
            for implementation in DCN_IMPLEMENTATIONS:
                row[implementation] = benchmark_dcn_case(implementation, pass_name, size, args, settings).to_dict()
                release_freed_memory()
            row["speedup_median"] = safe_ratio(row["torchvision"]["median_ms"], row["torch"]["median_ms"])
            row["speedup_min"] = safe_ratio(row["torchvision"]["min_ms"], row["torch"]["min_ms"])
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def format_table(headers: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """A plain-text table: the first `text_columns` columns left-aligned, the (numeric) others right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if index < text_columns else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(row) for row in rows])


def fmt_number(value: float | None, digits: int = 1, suffix: str = "") -> str:
    """A number with fixed decimals, or "n/a"."""
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def environment_info(device: torch.device, meter: PeakMemoryMeter) -> dict[str, Any]:
    """Device, library versions, threads and memory method of this run."""
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "dtype": "float32",
        "memory_method": meter.description,
    }


def format_header(env: dict[str, Any], args: argparse.Namespace) -> str:
    """Environment and configuration lines."""
    budget = f"{args.max_seconds_per_case:g} s" if args.max_seconds_per_case > 0 else "none"
    lines = [
        "FaPN benchmark",
        f"  device       : {env['device']} ({env['device_name']}), {env['threads']} torch threads",
        f"  versions     : torch {env['torch']}, torchvision {env['torchvision']}, python {env['python']}",
        f"  timing       : {args.warmup} warm-up + up to {args.repeats} timed call(s) per case, median and min, "
        f"time budget per case {budget}",
        f"  inputs       : float32, random, seed {args.seed}",
        f"  peak memory  : {env['memory_method']} on one extra untimed call",
    ]
    return "\n".join(lines)


def format_model_results(results: dict[str, Any], args: argparse.Namespace) -> str:
    """The FPN / FaPN table with the ratio row."""
    title = (
        f"Model forward (eval, inference_mode): backbone {args.backbone}, input {args.batch_size}x3x"
        f"{args.height}x{args.width}, {args.num_labels} labels, FaPN deform conv: "
        f"{results['deform_conv_implementation']}"
    )
    headers = ["model", "params (M)", "median (ms)", "min (ms)", "runs", "peak mem (MiB)"]
    rows = []
    for name in ("FPN", "FaPN"):
        r = results[name]
        figures = [fmt_number(r["median_ms"]), fmt_number(r["min_ms"]), str(r["runs"])]
        rows.append([name, f"{r['parameters'] / 1e6:.2f}", *figures, fmt_number(r["peak_memory_mib"])])
    ratio = results["ratio"]
    rows.append(
        [
            "FaPN / FPN",
            fmt_number(ratio["parameters"], 3, "x"),
            fmt_number(ratio["median_ms"], 3, "x"),
            fmt_number(ratio["min_ms"], 3, "x"),
            "",
            fmt_number(ratio["peak_memory_mib"], 3, "x"),
        ]
    )
    return f"{title}\n{format_table(headers, rows)}"


def format_dcn_results(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """One line per (size, pass, implementation), then the speed-ups."""
    title = (
        f"Deformable convolution: {DCN_CHANNELS} -> {DCN_CHANNELS} channels, {DCN_KERNEL}x{DCN_KERNEL}, padding "
        f"{DCN_PADDING}, {DCN_GROUPS} deformable groups, with mask, batch {args.dcn_batch_size}"
    )
    headers = ["size", "pass", "implementation", "median (ms)", "min (ms)", "runs", "peak mem (MiB)"]
    table = []
    for row in rows:
        for implementation in DCN_IMPLEMENTATIONS:
            r = row[implementation]
            figures = [fmt_number(r["median_ms"]), fmt_number(r["min_ms"]), str(r["runs"])]
            table.append([row["size"], row["pass"], implementation, *figures, fmt_number(r["peak_memory_mib"])])
    speedup_headers = ["size", "pass", "speed-up (median)", "speed-up (min)"]
    speedups = [
        [row["size"], row["pass"], fmt_number(row["speedup_median"], 2, "x"), fmt_number(row["speedup_min"], 2, "x")]
        for row in rows
    ]
    return (
        f"{title}\n{format_table(headers, table, text_columns=3)}\n\n"
        "Speed-up of the pure-PyTorch kernel = torchvision time / torch time (above 1: torch is faster)\n"
        f"{format_table(speedup_headers, speedups, text_columns=2)}"
    )


def main(argv: list[str] | None = None) -> None:
    """Runs the requested benchmarks and prints (and optionally saves) the figures."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meter = select_memory_meter(device)
    settings = BenchmarkSettings(device, args.warmup, args.repeats, args.max_seconds_per_case, meter)
    env = environment_info(device, meter)
    print(format_header(env, args), flush=True)

    report: dict[str, Any] = {"environment": env, "config": {**vars(args), "json": str(args.json)}}
    report["config"]["dcn_sizes"] = [f"{h}x{w}" for h, w in args.dcn_sizes]
    if not args.skip_model:
        report["model"] = benchmark_models(args, settings)
        print(f"\n{format_model_results(report['model'], args)}", flush=True)
    if not args.skip_dcn:
        report["deform_conv"] = benchmark_dcn(args, settings)
        print(f"\n{format_dcn_results(report['deform_conv'], args)}", flush=True)

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nWrote {args.json}")


if __name__ == "__main__":
    main()
