"""`python -m fapn_hf benchmark-data` (`fapn_hf.benchmark.data_pipeline`): each layout's synthetic files are the
layout's own (recognised, paired, decodable), the cases follow the recipes, and the command reports every layout (no
timing asserts: figures depend on the machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fapn_hf.benchmark.data_pipeline import CASES, DataBenchmarkArguments, workers_needed, write_layout
from fapn_hf.labels import LABEL_SETS
from fapn_hf.tasks.semantic import layouts
from fapn_hf.tasks.semantic.data import LabelSpec, check_samples, load_segmentation_dataset
from fapn_hf.training.args import parse_arguments

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_case_follows_its_recipe(case, tmp_path):
    argv = ["--output_dir", str(tmp_path), "--bf16", "false"]
    model_args, data_args, training_args = parse_arguments(argv, recipe=REPO_ROOT / "recipes" / case.recipe)
    assert model_args.preset == case.preset
    assert tuple(data_args.crop_size) == case.crop_size and tuple(data_args.scale_range) == case.scale_range
    assert data_args.cat_max_ratio == case.cat_max_ratio and data_args.photometric_distortion
    assert training_args.per_device_train_batch_size == case.batch_per_gpu


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_cases_files_are_its_layout(case, tmp_path, monkeypatch):
    monkeypatch.setenv(layouts.INDEX_CACHE_ENV, str(tmp_path / "cache"))
    folder = write_layout(case, tmp_path / case.name, samples=2, scale=0.1)
    found = layouts.find_layout(folder)
    assert found is not None and found.layout.name == case.name
    splits = load_segmentation_dataset(str(folder))
    assert (len(splits["train"]), len(splits["validation"])) == (2, 1)
    settings = layouts.label_settings(folder)
    spec = LabelSpec(len(LABEL_SETS[settings.labels]), 255, settings.label_mapping, settings.reduce_labels)
    _, report = check_samples(splits["train"], spec, "fail", "train")  # decodes both: values inside the label map
    assert report.num_skipped == 0 and report.decoded_samples == 2 and report.labelled_pixels > 0


def test_workers_needed_rounds_the_gpus_rate_over_a_workers_up():
    assert workers_needed(4, 0.5, 8.0) == 1  # the GPU takes 8 samples/s: one worker at 8/s suffices
    assert workers_needed(4, 0.5, 7.9) == 2
    assert workers_needed(2, 0.25, 3.0) == 3  # 8 samples/s over 3 per worker
    with pytest.raises(ValueError, match="unknown layouts"):
        DataBenchmarkArguments(layouts=["kitti"])


@pytest.mark.slow
def test_the_command_reports_every_layout_and_writes_json(tmp_path):
    output = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fapn_hf",
            "benchmark-data",
            "--scale",
            "0.1",
            "--samples",
            "1",
            "--seeds",
            "1",
            "--rounds",
            "1",
            "--gpu_step_seconds",
            "0.5",
            "--output",
            str(output),
        ],  # fmt: skip
        env={**os.environ, "HF_HUB_OFFLINE": "1", layouts.INDEX_CACHE_ENV: str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert [row["layout"] for row in report["layouts"]] == [case.name for case in CASES]
    for row in report["layouts"]:
        cpu = row["cpu_seconds"]
        assert all(cpu[step] >= 0 for step in ("read", "decode", "augment", "process"))
        assert row["samples_per_second"] == pytest.approx(1 / cpu["end to end"])
        expected = workers_needed(row["batch_per_gpu"], 0.5, row["samples_per_second"])
        assert report["workers_per_gpu"][row["layout"]] == {"0.5": expected}
        assert f"| {row['title']} |" in result.stdout
    assert report["environment"]["cores"] == os.cpu_count() and np.isfinite(report["environment"]["load_average"][0])
    assert "workers at 0.5 s/step" in result.stdout
    # The PNG decoder is part of the figures: pyspng's version (a declared dependency), or None and "PIL".
    from importlib.metadata import version

    assert report["environment"]["pyspng"] == version("pyspng")
    assert f"PNG decoding by pyspng {version('pyspng')}" in result.stdout
