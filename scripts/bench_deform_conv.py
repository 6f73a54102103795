"""CPU figures of issue 22 for the deformable convolution: its eager forward against a dense 3x3 convolution of the
same shape (with and without a competing busy process), and a FaPN model run by ONNX Runtime against eager PyTorch.

Every figure of a table comes from one run, the variants interleaved call by call and repeated, so the ratios
compare like with like on a shared machine; the load average is printed with them.

    python scripts/bench_deform_conv.py dcn --sizes 64x128 128x256 --threads 2 --repeats 7
    python scripts/bench_deform_conv.py dcn --sizes 128x256 --threads 2 --competitors 1   # one busy process
    python scripts/bench_deform_conv.py dcn --threads 1 2 auto --competitors 0 1          # auto: the package's choice
    python scripts/bench_deform_conv.py onnx --size 256x512 --threads 2 --repeats 5      # FaPN-R50 (export: minutes)
    python scripts/bench_deform_conv.py onnx --preset maskformer-fapn-r101 --size 256x512

`dcn` also times the kernel as it was before issue 22 when `--baseline FILE` names a copy of the old
`fapn_hf/modeling/deform_conv.py` (e.g. `git show e24e262~1:fapn_hf/modeling/deform_conv.py > /tmp/old_dc.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

CHANNELS, GROUPS, TAPS = 256, 8, 9


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    if not (height.isdigit() and width.isdigit()):
        raise ValueError(f"a size is HEIGHTxWIDTH (e.g. 128x256), got {text!r}")
    return int(height), int(width)


class Competitors:
    """`count` busy processes (one core's worth of pure Python work each) for the duration of a `with` block. They
    are started through a shell that exits at once, so they are not this process's children: the package's thread
    choice counts its own children's work (data-loader workers) as its own, and these must count as another's."""

    def __init__(self, count: int) -> None:
        self.count, self.pids = count, []

    def __enter__(self) -> Competitors:
        for _ in range(self.count):
            started = subprocess.run(
                ["sh", "-c", f"{shlex.quote(sys.executable)} -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            self.pids.append(int(started.stdout.strip()))
        time.sleep(0.5 if self.count else 0.0)
        return self

    def __exit__(self, *_: object) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pids = []


def interleaved(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time in ms of each call, the calls alternating, after one warm-up call each."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(1000 * (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in times.items()}


def load_kernel(path: str) -> Callable[..., torch.Tensor]:
    spec = importlib.util.spec_from_file_location("baseline_deform_conv", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.deform_conv2d


def dcn_calls(
    size: tuple[int, int], kernel: Callable[..., torch.Tensor], baseline: Callable[..., torch.Tensor] | None
) -> dict[str, Callable[[], torch.Tensor]]:
    """The dense 3x3 convolution and the deformable one(s) on random FaPN-sized tensors (offsets of a few pixels)."""
    height, width = size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, CHANNELS, height, width, generator=generator)
    offset = torch.randn(1, 2 * GROUPS * TAPS, height, width, generator=generator) * 2
    mask = torch.rand(1, GROUPS * TAPS, height, width, generator=generator)
    weight = torch.randn(CHANNELS, CHANNELS, 3, 3, generator=generator) / 48
    bias = torch.randn(CHANNELS, generator=generator)
    calls = {
        "dense": lambda: F.conv2d(x, weight, bias, padding=1),
        "ours": lambda: kernel(x, offset, weight, bias, padding=1, mask=mask),
    }
    if baseline is not None:
        calls["baseline"] = lambda: baseline(x, offset, weight, bias, padding=1, mask=mask)
    return calls


def dcn_table(args: argparse.Namespace) -> None:
    from fapn_hf.inference.threads import choose_num_threads
    from fapn_hf.modeling.deform_conv import deform_conv2d

    baseline = load_kernel(args.baseline) if args.baseline else None
    print(f"load average before: {os.getloadavg()}")
    print("| size | competing processes | threads | dense conv | deformable (this kernel) | ratio | baseline | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for text in args.sizes:
        calls = dcn_calls(parse_size(text), deform_conv2d, baseline)
        for competitors in args.competitors:
            for setting in args.threads:
                with torch.inference_mode(), Competitors(competitors):
                    # "auto": the count the package's commands choose, measured with the competitors running.
                    threads = choose_num_threads() if setting == "auto" else int(setting)
                    torch.set_num_threads(threads)
                    ms = interleaved(calls, args.repeats)
                ours = ms["ours"] / ms["dense"]
                shown = f"{threads} (auto)" if setting == "auto" else str(threads)
                row = f"| {text} | {competitors} | {shown} | {ms['dense']:.0f} ms | {ms['ours']:.0f} ms | {ours:.2f}x |"
                if baseline is not None:
                    row += f" {ms['baseline']:.0f} ms | {ms['baseline'] / ms['dense']:.2f}x |"
                else:
                    row += " | |"
                print(row, flush=True)
    print(f"load average after: {os.getloadavg()}")


def onnx_table(args: argparse.Namespace) -> None:
    from fapn_hf.benchmark.run import exercise_offsets
    from fapn_hf.export.onnx import OnnxRuntimeModel, export_onnx
    from fapn_hf.families import family_of_preset

    torch.manual_seed(0)
    family = family_of_preset(args.preset)
    config = family.preset_config(args.preset, [f"class {i}" for i in range(19)])
    model = family.head_class(config).eval()
    exercise_offsets(model, seed=1)  # offsets of about a pixel, so the deformable sampling is exercised
    generator = torch.Generator().manual_seed(1)
    height, width = parse_size(args.size)
    pixel_values = torch.randn(1, 3, height, width, generator=generator)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        path = export_onnx(model, folder, verify=False)
        print(f"exported {args.preset} in {time.perf_counter() - started:.0f} s")
        names = family.export.output_names

        def eager() -> tuple[torch.Tensor, ...]:
            with torch.inference_mode():
                outputs = model(pixel_values=pixel_values)
            return tuple(getattr(outputs, name) for name in names)

        def label_map(outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
            if len(outputs) == 1:  # a FaPN's logits
                return outputs[0].argmax(1)
            # MaskFormer: the semantic inference of its post-processing (class probabilities times mask probabilities)
            classes, masks = outputs
            return torch.einsum("nqc,nqhw->nchw", classes.softmax(-1)[..., :-1], masks.sigmoid()).argmax(1)

        rows = []

        def onnxruntime() -> tuple[torch.Tensor, ...]:
            outputs = onnx_model(pixel_values=pixel_values)
            return tuple(getattr(outputs, name) for name in names)

        for threads in args.threads:
            torch.set_num_threads(threads)
            onnx_model = OnnxRuntimeModel(path, config, num_threads=threads)
            print(f"load average before: {os.getloadavg()}, threads {threads}")
            with Competitors(args.competitors[0]):
                ms = interleaved({"eager": eager, "onnxruntime": onnxruntime}, args.repeats)
            print(f"load average after: {os.getloadavg()}")
            reference, other = eager(), onnxruntime()
            diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(reference, other))
            agreement = (label_map(reference) == label_map(other)).double().mean().item()
            rows.append(
                f"| {args.preset} | {args.size} | {threads} | {ms['eager']:.0f} ms | {ms['onnxruntime']:.0f} ms | "
                f"{ms['eager'] / ms['onnxruntime']:.2f}x | {diff:.2e} | {100 * agreement:.3f} % |"
            )
        print("| model | size | threads | eager | ONNX Runtime | eager / ORT | max abs diff | same label |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        if args.profile:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.enable_profiling = True
            options.profile_file_prefix = args.profile
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for _ in range(2):
                session.run(None, {"pixel_values": pixel_values.numpy()})
            print("ORT profile:", session.end_profiling())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=("dcn", "onnx"))
    parser.add_argument(
        "--threads", nargs="+", default=["2"], help="thread counts, or 'auto' (dcn: the package's choice under load)"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--competitors", type=int, nargs="+", default=[0], help="busy processes per measurement")
    parser.add_argument("--sizes", nargs="+", default=["64x128", "128x256"], help="dcn: HxW of the 256-ch maps")
    parser.add_argument("--baseline", help="dcn: path of another deform_conv.py to time alongside")
    parser.add_argument("--preset", default="fapn-r50", help="onnx: the model preset")
    parser.add_argument("--size", default="256x512", help="onnx: the input HxW")
    parser.add_argument("--profile", help="onnx: also write ORT's per-node profile with this file prefix")
    args = parser.parse_args(argv)
    if args.table == "onnx":
        args.threads = [int(value) for value in args.threads]
    torch.set_num_threads(int(args.threads[0]) if args.threads[0] != "auto" else torch.get_num_threads())
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    (dcn_table if args.table == "dcn" else onnx_table)(args)


if __name__ == "__main__":
    main()
