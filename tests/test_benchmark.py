"""`fapn-benchmark` (`fapn_hf.benchmark.run`): it runs end to end in quick mode and reports every target of issue 13 (no
timing asserts: figures depend on the machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fapn_hf.benchmark.run import BenchmarkArguments
from fapn_hf.cli import commands as cli


def test_quick_defaults_and_explicit_arguments():
    full = cli.parse_arguments(BenchmarkArguments, [], "fapn-benchmark", "")
    assert (full.backbone, full.height, full.width) == ("resnet50", 512, 1024)
    assert full.dcn_sizes == ["64x128", "128x256"] and full.dcn_batch_sizes == [1, 2]
    quick = cli.parse_arguments(
        BenchmarkArguments, ["--quick", "--dcn-sizes", "8x16", "12X20", "--height", "96"], "fapn-benchmark", ""
    )
    assert quick.backbone == "resnet18" and quick.height == 96  # explicit values win over the quick defaults
    assert quick.dcn_sizes == ["8x16", "12x20"] and quick.dcn_batch_sizes == [1]
    # The child processes that measure memory rebuild the same (resolved) arguments from to_argv().
    assert cli.parse_arguments(BenchmarkArguments, quick.to_argv(), "fapn-benchmark", "") == quick
    with pytest.raises(SystemExit, match=r"error: expected a size HxW such as 512x1024, got '8by16'"):
        cli.parse_arguments(BenchmarkArguments, ["--dcn_sizes", "8by16"], "fapn-benchmark", "")
    with pytest.raises(SystemExit, match=r"error: rounds must be >= 1 and min_run_time > 0, got 0 and 2.0"):
        cli.parse_arguments(BenchmarkArguments, ["--rounds", "0"], "fapn-benchmark", "")


def test_quick_run_prints_every_target_and_writes_json(tmp_path):
    output = tmp_path / "bench" / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fapn_hf",
            "benchmark",
            "--quick",
            "--device",
            "cpu",
            "--threads",
            "2",
            "--output",
            str(output),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())

    assert report["environment"]["threads"] == 2 and report["environment"]["device"] == "cpu"
    model = report["model"]
    for name in ("FPN", "FaPN"):
        assert model[name]["median_ms"] > 0 and model[name]["peak_memory_mib"] is not None
    assert model["FaPN"]["flops"] > model["FPN"]["flops"] > 0  # FAM adds an offset conv and a DCN per level
    (row,) = report["deform_conv"]
    assert (row["size"], row["batch"]) == ("16x32", 1)
    assert {"dense conv forward", "torch forward", "torchvision forward"} <= row["cases"].keys()
    for key in ("torch forward+backward", "torchvision forward+backward"):
        assert row["cases"][key]["median_ms"] > 0 and row["cases"][key]["peak_memory_mib"] is not None

    targets = {target["name"]: target for target in report["targets"]}
    expected = [
        ("DCN forward / dense 3x3 conv time (16x32, batch 1)", 2.0),
        ("torchvision / DCN time, forward (16x32, batch 1)", 3.0),
        ("torchvision / DCN time, forward+backward (16x32, batch 1)", 3.0),
        ("DCN / torchvision peak memory, forward+backward (16x32, batch 1)", 1.0),
        ("FaPN / FPN forward time (1x3x64x128)", 1.3),
        ("FaPN / FPN peak memory (1x3x64x128)", 1.3),
    ]
    for name, bound in expected:
        assert targets[name]["bound"] == bound and targets[name]["measured"] is not None
        assert targets[name]["met"] in (True, False)
        assert name in result.stdout  # the printed table carries every target with its mark
    assert result.stdout.count("pass") + result.stdout.count("MISS") >= len(expected)

    # Runtimes: eager, compiled (quick: dynamo's "eager" backend, fullgraph) and bf16 autocast at the quick size;
    # ONNX Runtime is left out of --quick (its export takes minutes). No GPU here: that section says it skipped.
    (runtime,) = report["runtimes"]
    assert runtime["size"] == "64x128" and set(runtime["variants"]) == {"eager", "compiled", "bf16"}
    assert runtime["variants"]["compiled"]["max_logit_diff"] < 1e-3
    bf16 = runtime["variants"]["bf16"]
    assert 0 < bf16["max_logit_diff"] < 1 and bf16["label_agreement"] > 0.9
    assert report["gpu_realtime"] is None and "skipped, no CUDA device" in result.stdout
    for name in ("torch.compile (eager) / eager time (FaPN, 1x3x64x128)", "bf16 autocast / float32 eager time"):
        assert any(target.startswith(name) for target in targets) and name in result.stdout
