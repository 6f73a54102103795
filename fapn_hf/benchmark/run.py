"""Benchmarks FaPN against its FPN baseline and the pure-PyTorch deformable convolution against torchvision's and
against a dense convolution, and checks the figures against the speed targets of issue 13.

Everything is measured in one run, on one device, so the printed ratios compare like with like:

1. Model: forward latency (eval mode, `torch.inference_mode()`), peak memory, parameters and FLOPs of FaPN
   (`use_fam=True, use_fsm=True`) and of the FPN baseline on the same code path (`use_fam=False, use_fsm=False`).
2. Deformable convolution at FaPN's sizes (256 -> 256 channels, 3x3, padding 1, 8 deformable groups, with mask), per
   size and batch: a dense 3x3 convolution of the same shape (the floor: the sampling is the only extra work), the
   forward pass (inference mode) and forward + backward of `fapn_hf.deform_conv2d` and of
   `torchvision.ops.deform_conv2d`.
3. Targets: every ratio of the issue, next to its target, with a pass/miss mark.

Latency: `torch.utils.benchmark.Timer.blocked_autorange` (at least `--min_run_time` seconds per case after a
warm-up call, with `--threads` threads); the median is the figure, the minimum is kept in the JSON. With `--rounds`
above 1 every case is timed that many times, interleaved with the others, and the round with the lowest median
counts: on a shared machine this keeps the ratios of one run comparable.

Peak memory: each case runs in a fresh subprocess: one warm-up call, then one measured call; the figure is the
increase of peak memory over the level just before that call (activations and workspace, not weights and inputs).
On CUDA: `torch.cuda.max_memory_allocated`. On CPU: the peak resident set size, read exactly from `VmHWM` after
resetting it through `/proc/self/clear_refs` where Linux allows it, otherwise sampled every 5 ms from a thread;
glibc returns freed memory at once in these processes (`MALLOC_TRIM_THRESHOLD_=0`), so the allocator's cache of
freed memory (up to 64 MiB, depending on the order of allocations) does not blur the figure.

Usage (the command line is `fapn_hf.cli.benchmark_main`; `run_benchmark(BenchmarkArguments(...))` from Python):

    fapn-benchmark                                         # everything: R50 at 1x3x512x1024, cuda if any
    fapn-benchmark --quick --output outputs/bench.json     # smoke test, under a minute on 2 cores
    fapn-benchmark --device cpu --threads 2 --rounds 3 --output outputs/benchmark.json
    python -m fapn_hf benchmark --quick --dcn_sizes 8x16 12x20   # the same command
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchvision
from torch.utils import benchmark as torch_benchmark
from torch.utils.flop_counter import FlopCounterMode

MIB = 1024 * 1024
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
SAMPLING_INTERVAL_S = 0.005

DCN_CHANNELS = 256
DCN_KERNEL = 3
DCN_PADDING = 1
DCN_GROUPS = 8
# (operation, pass) of every deformable-convolution case, in table order.
DCN_CASES = (
    ("dense conv", "forward"),
    ("torch", "forward"),
    ("torchvision", "forward"),
    ("torch", "forward+backward"),
    ("torchvision", "forward+backward"),
)

# The targets of issue 13.
DCN_FORWARD_OVER_DENSE_MAX = 2.0
DCN_MEMORY_OVER_TORCHVISION_MAX = 1.0
DCN_SPEEDUP_OVER_TORCHVISION_MIN = 3.0
FAPN_OVER_FPN_TIME_MAX = 1.3
FAPN_OVER_FPN_MEMORY_MAX = 1.3

# Defaults of the size and timing arguments: the configuration, and a small one for smoke tests (`--quick`).
FULL_SETTINGS = {
    "backbone": "resnet50",
    "height": 512,
    "width": 1024,
    "dcn_sizes": ["64x128", "128x256"],
    "dcn_batch_sizes": [1, 2],
    "min_run_time": 2.0,
    "runtime_sizes": ["512x1024", "256x512"],
    "compile_backend": "inductor",
}
QUICK_SETTINGS = {
    "backbone": "resnet18",
    "height": 64,
    "width": 128,
    "dcn_sizes": ["16x32"],
    "dcn_batch_sizes": [1],
    "min_run_time": 0.05,
    "runtime_sizes": ["64x128"],
    "compile_backend": "eager",  # dynamo's graph capture (fullgraph) without inductor's minutes of code generation
}


# ----------------------------------------------------------------------------------------------------------------
# Arguments and environment
# ----------------------------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """`"512x1024"` -> `(512, 1024)` (height, width); raises `ValueError` for anything else."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except (ValueError, AttributeError) as error:
        raise ValueError(f"expected a size HxW such as 512x1024, got {text!r}") from error
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (height, width), got {(height, width)!r}")
    return height, width


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class BenchmarkArguments:
    """What to measure and how (the flags of `fapn-benchmark`). Size and timing fields left at None take
    `FULL_SETTINGS`, or `QUICK_SETTINGS` with `quick`; sizes are `HxW` strings (`"64x128"`)."""

    device: str | None = field(default=None, metadata=_help("torch device (default: cuda if available, else cpu)"))
    threads: int | None = field(default=None, metadata=_help("torch threads (default: torch's choice)"))
    quick: bool = field(default=False, metadata=_help("small sizes and short timing: a smoke test"))
    backbone: str | None = field(
        default=None, metadata=_help(f"timm backbone of both models ({FULL_SETTINGS['backbone']})")
    )
    height: int | None = field(default=None, metadata=_help(f"model input height ({FULL_SETTINGS['height']})"))
    width: int | None = field(default=None, metadata=_help(f"model input width ({FULL_SETTINGS['width']})"))
    batch_size: int = field(default=1, metadata=_help("model batch size"))
    num_labels: int = field(default=19, metadata=_help("classes of both models"))
    deform_conv_implementation: Literal["auto", "torch", "torchvision"] = field(
        default="auto",
        metadata=_help(
            "deformable conv kernel inside the FaPN model (auto: torchvision on CUDA, pure PyTorch elsewhere)"
        ),
    )
    dcn_sizes: list[str] | None = field(default=None, metadata=_help("DCN sizes HxW (64x128 128x256)"))
    dcn_batch_sizes: list[int] | None = field(default=None, metadata=_help("DCN batch sizes (1 2)"))
    min_run_time: float | None = field(default=None, metadata=_help("seconds of timed calls per case (2)"))
    rounds: int = field(default=1, metadata=_help("interleaved timing rounds; the best one counts"))
    skip_model: bool = field(default=False, metadata=_help("no FaPN vs FPN model table"))
    skip_dcn: bool = field(default=False, metadata=_help("no deformable convolution table"))
    runtime_sizes: list[str] | None = field(
        default=None, metadata=_help("FaPN inputs HxW of the runtime table (eager, compiled, bf16, ORT)")
    )
    compile_backend: str | None = field(
        default=None, metadata=_help("torch.compile backend of the runtime table (inductor)")
    )
    skip_runtimes: bool = field(default=False, metadata=_help("no compiled / bf16 / ONNX Runtime table"))
    skip_onnx: bool = field(
        default=False, metadata=_help("no ONNX Runtime column (its export takes minutes; --quick skips it)")
    )
    seed: int = field(default=0, metadata=_help("seed of the models and inputs"))
    output: Path | None = field(default=None, metadata=_help("also write every figure as JSON to this file"))
    # Internal: measure the peak memory of one case (JSON) in this fresh process and print it as JSON.
    memory_case: str | None = field(default=None, metadata={"help": argparse.SUPPRESS})

    def __post_init__(self) -> None:
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        for name, value in (QUICK_SETTINGS if self.quick else FULL_SETTINGS).items():
            if getattr(self, name) is None:
                setattr(self, name, list(value) if isinstance(value, list) else value)
        # Canonical "HxW" strings; parse_size raises ValueError naming a malformed one.
        self.dcn_sizes = [_size_text(parse_size(text)) for text in self.dcn_sizes]
        self.runtime_sizes = [_size_text(parse_size(text)) for text in self.runtime_sizes]
        if self.output is not None:
            self.output = Path(self.output)
        if not self.dcn_batch_sizes or min(self.dcn_batch_sizes) < 1:
            raise ValueError(f"dcn_batch_sizes must be positive integers, got {self.dcn_batch_sizes}")
        if self.rounds < 1 or self.min_run_time <= 0:
            raise ValueError(f"rounds must be >= 1 and min_run_time > 0, got {self.rounds} and {self.min_run_time}")

    def to_argv(self) -> list[str]:
        """The flags that rebuild these (resolved) arguments in a child process, without `output`."""
        argv = []
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None or item.name in ("output", "memory_case"):
                continue
            argv += [f"--{item.name}", *(map(str, value) if isinstance(value, list) else [str(value)])]
        return argv


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def device_name(device: torch.device) -> str:
    """A human-readable name of the device."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def synchronize(device: torch.device) -> None:
    """Waits for queued kernels, so that wall-clock time and memory figures cover them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One measured call: a model forward (`kind="model"`) or a convolution (`kind="dcn"`)."""

    kind: str
    name: str  # model: "FPN" or "FaPN"; dcn: "dense conv", "torch" or "torchvision"
    pass_name: str = "forward"
    size: tuple[int, int] = (0, 0)
    batch: int = 1

    @property
    def label(self) -> str:
        if self.kind == "model":
            return self.name
        return f"{self.size[0]}x{self.size[1]} batch {self.batch} {self.name} {self.pass_name}"


def build_model(args: BenchmarkArguments, device: torch.device, feature_aligned: bool) -> torch.nn.Module:
    """FaPN (`feature_aligned=True`, preset `fapn-r50`) or the FPN baseline (`fpn-r50`) on the same code path, with
    the benchmark's backbone and number of classes, in eval mode on `device`."""
    from ..families import family_of_preset

    torch.manual_seed(args.seed)
    preset = "fapn-r50" if feature_aligned else "fpn-r50"
    family = family_of_preset(preset)
    config = family.preset_config(
        preset,
        [f"class {i}" for i in range(args.num_labels)],
        backbone=args.backbone,
        deform_conv_implementation=args.deform_conv_implementation,
    )
    return family.head_class(config).eval().to(device)


def make_dcn_inputs(case: Case, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Random input, offsets (a few pixels), mask, weight, bias and output gradient of a FaPN-sized DCN."""
    height, width = case.size
    taps = DCN_KERNEL * DCN_KERNEL
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale).to(device)

    return {
        "input": rand(case.batch, DCN_CHANNELS, height, width),
        "offset": rand(case.batch, 2 * DCN_GROUPS * taps, height, width, scale=2.0),
        "mask": rand(case.batch, DCN_GROUPS * taps, height, width).sigmoid(),
        "weight": rand(DCN_CHANNELS, DCN_CHANNELS, DCN_KERNEL, DCN_KERNEL, scale=(DCN_CHANNELS * taps) ** -0.5),
        "bias": rand(DCN_CHANNELS, scale=0.1),
        "grad_output": rand(case.batch, DCN_CHANNELS, height, width),
    }


def convolution(name: str) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """The convolution of a DCN case: the dense floor, the pure-PyTorch kernel or torchvision's."""
    if name == "dense conv":
        return lambda t: F.conv2d(t["input"], t["weight"], t["bias"], padding=DCN_PADDING)
    if name == "torchvision":
        return lambda t: torchvision.ops.deform_conv2d(
            t["input"], t["offset"], t["weight"], t["bias"], padding=DCN_PADDING, mask=t["mask"]
        )
    from ..modeling.deform_conv import deform_conv2d

    return lambda t: deform_conv2d(
        t["input"], t["offset"], t["weight"], t["bias"], padding=DCN_PADDING, mask=t["mask"], implementation="torch"
    )


def model_forward(model: torch.nn.Module, args: BenchmarkArguments, device: torch.device) -> Callable[[], None]:
    """One forward pass of `model` on a random batch, in inference mode."""
    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = torch.randn(args.batch_size, 3, args.height, args.width, generator=generator).to(device)

    def forward() -> None:
        with torch.inference_mode():
            model(pixel_values)

    return forward


def build_case(case: Case, args: BenchmarkArguments, device: torch.device) -> Callable[[], None]:
    """Builds what `case` needs (model or tensors) and returns the call to measure."""
    if case.kind == "model":
        return model_forward(build_model(args, device, feature_aligned=case.name == "FaPN"), args, device)

    tensors = make_dcn_inputs(case, device, args.seed)
    conv = convolution(case.name)
    if case.pass_name == "forward":

        def forward() -> None:
            with torch.inference_mode():
                conv(tensors)

        return forward

    leaves = [tensors[name].requires_grad_() for name in ("input", "offset", "mask", "weight", "bias")]

    def forward_backward() -> None:
        torch.autograd.grad(conv(tensors), leaves, tensors["grad_output"])

    return forward_backward


def model_cases(args: BenchmarkArguments) -> list[Case]:
    return [] if args.skip_model else [Case("model", "FPN"), Case("model", "FaPN")]


def dcn_cases(args: BenchmarkArguments) -> list[Case]:
    if args.skip_dcn:
        return []
    return [
        Case("dcn", name, pass_name, size, batch)
        for size in map(parse_size, args.dcn_sizes)
        for batch in args.dcn_batch_sizes
        for name, pass_name in DCN_CASES
    ]


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


def time_call(fn: Callable[[], None], device: torch.device, min_run_time: float) -> dict[str, Any]:
    """Median, interquartile range and minimum of `fn` in milliseconds (`Timer.blocked_autorange`)."""

    def call() -> None:
        fn()
        synchronize(device)

    timer = torch_benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return {
        "median_ms": measurement.median * 1e3,
        "iqr_ms": measurement.iqr * 1e3,
        "min_ms": min(measurement.times) * 1e3,
        "runs": len(measurement.times) * measurement.number_per_run,
    }


def time_cases(cases: list[Case], args: BenchmarkArguments, device: torch.device) -> dict[Case, dict[str, Any]]:
    """Times every case, in `args.rounds` interleaved rounds; the round with the lowest median counts."""
    calls = {case: build_case(case, args, device) for case in cases}
    best: dict[Case, dict[str, Any]] = {}
    for round_index in range(args.rounds):
        for case in cases:
            figures = time_call(calls[case], device, args.min_run_time)
            if case not in best or figures["median_ms"] < best[case]["median_ms"]:
                best[case] = figures
            print(f"  timed {case.label} (round {round_index + 1}): {figures['median_ms']:.1f} ms", flush=True)
    return best


def count_flops(case: Case, args: BenchmarkArguments, device: torch.device) -> tuple[int, int]:
    """Parameters and FLOPs (matrix products and convolutions, as `FlopCounterMode` counts them) of a model; on the
    meta device, so it costs no computation."""
    with torch.device("meta"):
        model = build_model(args, torch.device("meta"), feature_aligned=case.name == "FaPN")
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.empty(args.batch_size, 3, args.height, args.width, device="meta"))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops()


# ----------------------------------------------------------------------------------------------------------------
# Peak memory (each case in a fresh process)
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


def measure_memory_here(case: Case, args: BenchmarkArguments, device: torch.device) -> dict[str, Any]:
    """Peak memory of one call of `case` in this process, after one warm-up call."""
    call = build_case(case, args, device)
    call()
    meter = select_memory_meter(device)
    meter.start()
    call()
    peak = meter.stop()
    return {"peak_memory_mib": None if peak is None else peak / MIB, "memory_method": meter.description}


def measure_memory_in_subprocess(case: Case, args: BenchmarkArguments) -> dict[str, Any]:
    """Runs `python -m fapn_hf benchmark` with `args` on `case` alone in a fresh Python process and returns its
    peak-memory figures.

    glibc's malloc keeps up to 64 MiB of freed heap memory resident, more or less of it depending on the order of
    allocations; the child returns freed memory at once (`MALLOC_TRIM_THRESHOLD_=0`), so that the peak measures
    what the computation holds, not what the allocator caches."""
    command = [sys.executable, "-m", "fapn_hf", "benchmark", *args.to_argv(), "--memory_case", json.dumps(asdict(case))]
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "0"}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement of {case.label} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_memory(cases: list[Case], args: BenchmarkArguments, device: torch.device) -> dict[Case, dict[str, Any]]:
    """Peak memory of every case, each in its own process (a few at a time: only time is sensitive to sharing)."""
    workers = 1 if device.type == "cuda" else max(1, min(4, torch.get_num_threads()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        figures = list(pool.map(lambda case: measure_memory_in_subprocess(case, args), cases))
    return dict(zip(cases, figures))


# ----------------------------------------------------------------------------------------------------------------
# Runtimes: eager, torch.compile, bf16 autocast and ONNX Runtime on one FaPN model
# ----------------------------------------------------------------------------------------------------------------

# Standard deviation of the FAM offset convs' weights in the runtime table: a random-init FaPN has zero offset convs
# (it samples the regular grid); these give offsets of about a pixel, so the deformable sampling is really exercised.
RUNTIME_OFFSET_WEIGHT_STD = 0.02
RUNTIME_VARIANTS = ("eager", "compiled", "bf16", "onnxruntime")


def exercise_offsets(model: torch.nn.Module, seed: int, std: float = RUNTIME_OFFSET_WEIGHT_STD) -> torch.nn.Module:
    """Draws the weights of every deformable convolution's offset conv of `model` (any family) from N(0, std^2), so
    that a randomly initialised model samples off the regular grid; returns the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "offset_mask_conv"):
                weight = module.offset_mask_conv.weight
                weight.copy_(torch.randn(weight.shape, generator=generator).to(weight) * std)
    return model


def runtime_model(args: BenchmarkArguments, device: torch.device) -> torch.nn.Module:
    """The FaPN of the model table, with non-zero offset convs (see `RUNTIME_OFFSET_WEIGHT_STD`)."""
    return exercise_offsets(build_model(args, device, feature_aligned=True), args.seed + 1)


def logits_agreement(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Max |logit difference| and the share of pixels with the same argmax label."""
    reference, other = reference.float().cpu(), other.float().cpu()
    return {
        "max_logit_diff": (reference - other).abs().max().item(),
        "label_agreement": (reference.argmax(1) == other.argmax(1)).double().mean().item(),
    }


def measure_runtimes(args: BenchmarkArguments, device: torch.device) -> list[dict[str, Any]]:
    """Per size of `--runtime_sizes`: latency of eager float32, `torch.compile` (backend `--compile_backend`, static
    shapes; compile time reported apart), eager under bf16 autocast and the ONNX export run by onnxruntime (CPU, the
    same threads), each with its max logit difference and label agreement against eager float32."""
    import tempfile

    from ..export.onnx import OnnxRuntimeModel, export_onnx

    model = runtime_model(args, device)
    onnx_model, onnx_dir = None, None
    if not (args.skip_onnx or args.quick) and device.type == "cpu":
        if importlib.util.find_spec("onnxruntime") is None:
            print("  onnxruntime not installed: no ONNX Runtime column (pip install 'fapn_hf[onnx]')", flush=True)
        else:
            onnx_dir = tempfile.TemporaryDirectory()
            started = time.perf_counter()
            export_onnx(model, onnx_dir.name, verify=False)
            onnx_export_s = time.perf_counter() - started
            onnx_model = OnnxRuntimeModel(onnx_dir.name, model.config, num_threads=torch.get_num_threads())
            print(f"  exported ONNX in {onnx_export_s:.1f} s", flush=True)
    compiled = torch.compile(model, backend=args.compile_backend, fullgraph=True)
    rows = []
    try:
        for height, width in map(parse_size, args.runtime_sizes):
            generator = torch.Generator().manual_seed(args.seed)
            pixel_values = torch.randn(args.batch_size, 3, height, width, generator=generator).to(device)
            row: dict[str, Any] = {"size": f"{height}x{width}", "batch": args.batch_size, "variants": {}}

            def run(variant: str, pixel_values: torch.Tensor = pixel_values) -> torch.Tensor:
                with torch.inference_mode():
                    if variant == "compiled":
                        return compiled(pixel_values).logits
                    if variant == "bf16":
                        with torch.autocast(device.type, dtype=torch.bfloat16):
                            return model(pixel_values).logits
                    if variant == "onnxruntime":
                        return onnx_model(pixel_values=pixel_values).logits
                    return model(pixel_values).logits

            reference = run("eager")
            for variant in RUNTIME_VARIANTS:
                if variant == "onnxruntime" and onnx_model is None:
                    continue
                started = time.perf_counter()
                logits = run(variant)  # the first call compiles
                first_call_s = time.perf_counter() - started
                figures = time_call(lambda variant=variant: run(variant), device, args.min_run_time)
                figures.update(logits_agreement(reference, logits), first_call_s=first_call_s)
                row["variants"][variant] = figures
                print(
                    f"  timed {row['size']} {variant}: {figures['median_ms']:.1f} ms (first call "
                    f"{first_call_s:.1f} s), max |logit diff| {figures['max_logit_diff']:.2e}",
                    flush=True,
                )
            rows.append(row)
    finally:
        if onnx_dir is not None:
            onnx_dir.cleanup()
    return rows


def measure_realtime_gpu(args: BenchmarkArguments, device: torch.device) -> dict[str, Any] | None:
    """The paper's real-time figure on a GPU: FaPN-R18 at 1x3x512x1024 under bf16 autocast, frames per second
    (the paper reports 142 FPS on its own GPU and head). None without CUDA."""
    if device.type != "cuda":
        return None
    realtime_args = replace(args, backbone="resnet18")
    model = runtime_model(realtime_args, device)
    pixel_values = torch.randn(1, 3, 512, 1024, device=device)

    def forward() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(pixel_values)

    forward()
    figures = time_call(forward, device, args.min_run_time)
    from ..modeling.deform_conv import resolve_implementation

    return {
        "model": "FaPN-R18 (semantic FPN head)",
        "input": "1x3x512x1024",
        "dtype": "bfloat16 autocast",
        "deform_conv_implementation": resolve_implementation(args.deform_conv_implementation, device),
        "device_name": device_name(device),
        **figures,
        "fps": 1e3 / figures["median_ms"],
        "paper_fps": 142.0,
    }


# ----------------------------------------------------------------------------------------------------------------
# Results and targets
# ----------------------------------------------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """`numerator / denominator`, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


@dataclass
class Target:
    """One target of the issue: a measured ratio, its bound and whether the bound holds."""

    name: str
    measured: float | None
    bound: float | None  # None: information without a target
    at_most: bool = True

    @property
    def met(self) -> bool | None:
        if self.bound is None or self.measured is None:
            return None
        return self.measured <= self.bound if self.at_most else self.measured >= self.bound

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def dcn_targets(rows: list[dict[str, Any]]) -> list[Target]:
    targets = []
    for row in rows:
        where = f"{row['size']}, batch {row['batch']}"
        time = {key: figures["median_ms"] for key, figures in row["cases"].items()}
        memory = {key: figures["peak_memory_mib"] for key, figures in row["cases"].items()}
        targets += [
            Target(
                f"DCN forward / dense 3x3 conv time ({where})",
                ratio(time["torch forward"], time["dense conv forward"]),
                DCN_FORWARD_OVER_DENSE_MAX,
            ),
            Target(
                f"torchvision / DCN time, forward ({where})",
                ratio(time["torchvision forward"], time["torch forward"]),
                DCN_SPEEDUP_OVER_TORCHVISION_MIN,
                at_most=False,
            ),
            Target(
                f"torchvision / DCN time, forward+backward ({where})",
                ratio(time["torchvision forward+backward"], time["torch forward+backward"]),
                DCN_SPEEDUP_OVER_TORCHVISION_MIN,
                at_most=False,
            ),
            Target(
                f"DCN / torchvision peak memory, forward+backward ({where})",
                ratio(memory["torch forward+backward"], memory["torchvision forward+backward"]),
                DCN_MEMORY_OVER_TORCHVISION_MAX,
            ),
        ]
    return targets


def model_targets(model: dict[str, Any], args: BenchmarkArguments) -> list[Target]:
    where = f"{args.batch_size}x3x{args.height}x{args.width}"
    return [
        Target(f"FaPN / FPN forward time ({where})", model["ratio"]["median_ms"], FAPN_OVER_FPN_TIME_MAX),
        Target(f"FaPN / FPN peak memory ({where})", model["ratio"]["peak_memory_mib"], FAPN_OVER_FPN_MEMORY_MAX),
        Target("FaPN / FPN FLOPs (the time ratio at equal FLOP rates)", model["ratio"]["flops"], None),
    ]


def collect_model_results(
    timings: dict[Case, dict], memory: dict[Case, dict], counts: dict[Case, tuple[int, int]]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for case, (parameters, flops) in counts.items():
        results[case.name] = {"parameters": parameters, "flops": flops, **timings[case], **memory[case]}
    fpn, fapn = results["FPN"], results["FaPN"]
    keys = ("parameters", "flops", "median_ms", "min_ms", "peak_memory_mib")
    results["ratio"] = {key: ratio(fapn[key], fpn[key]) for key in keys}
    return results


def collect_dcn_results(cases: list[Case], timings: dict[Case, dict], memory: dict[Case, dict]) -> list[dict]:
    rows: dict[tuple, dict[str, Any]] = {}
    for case in cases:
        row = rows.setdefault(
            (case.size, case.batch), {"size": f"{case.size[0]}x{case.size[1]}", "batch": case.batch, "cases": {}}
        )
        row["cases"][f"{case.name} {case.pass_name}"] = {**timings[case], **memory[case]}
    return list(rows.values())


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


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    """A number with fixed decimals, or "n/a"."""
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def format_model_results(results: dict[str, Any], args: BenchmarkArguments, implementation: str) -> str:
    title = (
        f"Model forward (eval, inference_mode): backbone {args.backbone}, input {args.batch_size}x3x{args.height}x"
        f"{args.width}, {args.num_labels} labels, FaPN deform conv: {implementation}"
    )
    headers = ["model", "params (M)", "GFLOPs", "median (ms)", "IQR (ms)", "min (ms)", "runs", "peak mem (MiB)"]
    rows = []
    for name in ("FPN", "FaPN"):
        r = results[name]
        rows.append(
            [
                name,
                fmt(r["parameters"] / 1e6, 2),
                fmt(r["flops"] / 1e9),
                fmt(r["median_ms"]),
                fmt(r["iqr_ms"]),
                fmt(r["min_ms"]),
                str(r["runs"]),
                fmt(r["peak_memory_mib"]),
            ]
        )
    q = results["ratio"]
    rows.append(
        [
            "FaPN / FPN",
            fmt(q["parameters"], 3, "x"),
            fmt(q["flops"], 3, "x"),
            fmt(q["median_ms"], 3, "x"),
            "",
            fmt(q["min_ms"], 3, "x"),
            "",
            fmt(q["peak_memory_mib"], 3, "x"),
        ]
    )
    return f"{title}\n{format_table(headers, rows)}"


def format_dcn_results(rows: list[dict[str, Any]]) -> str:
    title = (
        f"Deformable convolution: {DCN_CHANNELS} -> {DCN_CHANNELS} channels, {DCN_KERNEL}x{DCN_KERNEL}, padding "
        f"{DCN_PADDING}, {DCN_GROUPS} deformable groups, with mask; 'dense conv' is F.conv2d of the same shape "
        "(the floor); 'torch' is fapn_hf.deform_conv2d"
    )
    headers = ["size", "batch", "operation", "pass", "median (ms)", "IQR (ms)", "min (ms)", "runs", "peak mem (MiB)"]
    table = []
    for row in rows:
        for name, pass_name in DCN_CASES:
            r = row["cases"][f"{name} {pass_name}"]
            table.append(
                [
                    row["size"],
                    str(row["batch"]),
                    name,
                    pass_name,
                    fmt(r["median_ms"]),
                    fmt(r["iqr_ms"]),
                    fmt(r["min_ms"]),
                    str(r["runs"]),
                    fmt(r["peak_memory_mib"]),
                ]
            )
    return f"{title}\n{format_table(headers, table, text_columns=4)}"


def runtime_targets(rows: list[dict[str, Any]], args: BenchmarkArguments) -> list[Target]:
    """Speed-ups of the runtime table (information: the issue asks for them to be reported, with no bound)."""
    targets = []
    names = {
        "compiled": f"torch.compile ({args.compile_backend}) / eager time",
        "bf16": "bf16 autocast / float32 eager time",
        "onnxruntime": "ONNX Runtime / eager time",
    }
    for row in rows:
        eager = row["variants"]["eager"]["median_ms"]
        for variant, name in names.items():
            if variant in row["variants"]:
                measured = ratio(row["variants"][variant]["median_ms"], eager)
                targets.append(Target(f"{name} (FaPN, {row['batch']}x3x{row['size']})", measured, None))
    return targets


def format_runtime_results(rows: list[dict[str, Any]], args: BenchmarkArguments) -> str:
    title = (
        f"FaPN runtimes: backbone {args.backbone}, batch {args.batch_size}, FAM offset convs ~N(0, "
        f"{RUNTIME_OFFSET_WEIGHT_STD}^2); compiled: torch.compile(backend={args.compile_backend!r}, fullgraph=True); "
        "bf16: torch.autocast bfloat16; onnxruntime: fapn_hf.onnx export (CPU provider, same threads). Differences "
        "are against eager float32 on the same input"
    )
    headers = [
        "size", "variant", "median (ms)", "IQR (ms)", "min (ms)", "first call (s)", "vs eager", "max |logit diff|",
        "same label",
    ]  # fmt: skip
    table = []
    for row in rows:
        eager = row["variants"]["eager"]["median_ms"]
        for variant, r in row["variants"].items():
            table.append(
                [
                    row["size"],
                    variant,
                    fmt(r["median_ms"]),
                    fmt(r["iqr_ms"]),
                    fmt(r["min_ms"]),
                    fmt(r["first_call_s"], 2),
                    fmt(ratio(r["median_ms"], eager), 3, "x"),
                    f"{r['max_logit_diff']:.2e}",
                    fmt(100 * r["label_agreement"], 3, "%"),
                ]
            )
    return f"{title}\n{format_table(headers, table, text_columns=2)}"


def format_realtime_gpu(result: dict[str, Any] | None) -> str:
    if result is None:
        return "GPU real-time figure (FaPN-R18, 1x3x512x1024, bf16): skipped, no CUDA device (run with --device cuda)"
    return (
        f"GPU real-time figure on {result['device_name']}: {result['model']}, {result['input']}, {result['dtype']}, "
        f"deform conv {result['deform_conv_implementation']}: {result['median_ms']:.2f} ms median = "
        f"{result['fps']:.1f} FPS (paper: {result['paper_fps']:.0f} FPS, its GPU and head unpublished)"
    )


def format_targets(targets: list[Target]) -> str:
    headers = ["target (issue 13; times are medians)", "measured", "target", "result"]
    rows = []
    for target in targets:
        bound = "" if target.bound is None else f"{'<=' if target.at_most else '>='} {target.bound:.2f}x"
        result = {True: "pass", False: "MISS", None: "info" if target.bound is None else "n/a"}[target.met]
        rows.append([target.name, fmt(target.measured, 2, "x"), bound, result])
    return format_table(headers, rows)


def environment_info(device: torch.device) -> dict[str, Any]:
    """Device, library versions and threads of this run."""
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "dtype": "float32",
    }


def run_benchmark(args: BenchmarkArguments) -> dict[str, Any] | None:
    """Runs the requested benchmarks, prints the tables and the targets, and returns (and writes to `args.output`,
    if set) the report: `environment`, `config`, `model`, `deform_conv`, `runtimes`, `gpu_realtime`, `targets`.
    With `args.memory_case` set (the child processes), measures that case's peak memory, prints it and returns
    None."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_case is not None:
        case_fields = json.loads(args.memory_case)
        case = Case(**{**case_fields, "size": tuple(case_fields["size"])})
        print(json.dumps(measure_memory_here(case, args, device)))
        return None

    env = environment_info(device)
    print(
        f"FaPN benchmark on {env['device']} ({env['device_name']}), {env['threads']} torch threads, torch "
        f"{env['torch']}, torchvision {env['torchvision']}; timing: Timer.blocked_autorange, >= {args.min_run_time:g}"
        f" s per case, best of {args.rounds} round(s); peak memory: one call in a fresh process per case "
        "(MALLOC_TRIM_THRESHOLD_=0)",
        flush=True,
    )
    cases = model_cases(args) + dcn_cases(args)
    timings = time_cases(cases, args, device)
    # The child processes get the same arguments (they return before writing any output), same threads. A quick
    # run measures only what a target needs: a fresh process per case costs seconds of imports.
    memory_cases = [c for c in cases if not args.quick or c.kind == "model" or c.pass_name == "forward+backward"]
    memory = {case: {"peak_memory_mib": None} for case in cases}
    memory.update(measure_memory(memory_cases, replace(args, threads=torch.get_num_threads()), device))

    report: dict[str, Any] = {"environment": env, "config": {**asdict(args), "output": str(args.output)}}
    report["environment"]["memory_method"] = next(
        (m["memory_method"] for m in memory.values() if m.get("memory_method")), None
    )
    targets: list[Target] = []
    if model_cases(args):
        from ..modeling.deform_conv import resolve_implementation

        counts = {case: count_flops(case, args, device) for case in model_cases(args)}
        report["model"] = collect_model_results(timings, memory, counts)
        implementation = resolve_implementation(args.deform_conv_implementation, device)
        report["model"]["deform_conv_implementation"] = implementation
        print(f"\n{format_model_results(report['model'], args, implementation)}")
        targets += model_targets(report["model"], args)
    if dcn_cases(args):
        report["deform_conv"] = collect_dcn_results(dcn_cases(args), timings, memory)
        print(f"\n{format_dcn_results(report['deform_conv'])}")
        targets = dcn_targets(report["deform_conv"]) + targets
    if not args.skip_runtimes:
        print("\nRuntimes (eager, compiled, bf16, ONNX Runtime):", flush=True)
        report["runtimes"] = measure_runtimes(args, device)
        print(f"\n{format_runtime_results(report['runtimes'], args)}")
        targets += runtime_targets(report["runtimes"], args)
    report["gpu_realtime"] = measure_realtime_gpu(args, device)
    print(f"\n{format_realtime_gpu(report['gpu_realtime'])}")
    report["targets"] = [target.to_dict() for target in targets]
    print(f"\n{format_targets(targets)}", flush=True)

    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"\nWrote {args.output}")
    return report


__all__ = ["FULL_SETTINGS", "QUICK_SETTINGS", "BenchmarkArguments", "exercise_offsets", "run_benchmark"]
