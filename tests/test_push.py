"""Model cards and Hub publishing: metadata parsed back with huggingface_hub, dry runs, clear failures."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config
from huggingface_hub import ModelCard

from fapn_hf import FaPNForSemanticSegmentation, FaPNImageProcessor, label_maps, preset_config
from fapn_hf.hub.cards import is_synthetic_demo, model_card, plan_upload, push_folder
from fapn_hf.modeling.remote_code import KERNEL_MODULES

REPO_ROOT = Path(__file__).resolve().parents[1]
METRICS = {"eval_mean_iou": 0.6116, "eval_boundary_mean_iou": 0.5836, "eval_pixel_accuracy": 0.95, "eval_loss": 0.2}


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def run_folder(tmp_path):
    """A folder like fapn-train writes: model, processor, metrics.json, plus files that must not be uploaded."""
    folder = tmp_path / "run"
    FaPNForSemanticSegmentation(tiny_config()).save_pretrained(folder)
    FaPNImageProcessor().save_pretrained(folder)
    (folder / "metrics.json").write_text(json.dumps({"eval": METRICS, "dataset": "demo"}))
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"state")
    return folder


def test_card_metadata_holds_the_measured_results():
    config = preset_config("fapn-r50-pointrend", "cityscapes")
    card = ModelCard(str(model_card(config, METRICS, dataset_name="cityscapes", model_name="org/fapn-r50")))
    data = card.data
    assert data.pipeline_tag == "image-segmentation" and data.library_name == "transformers"
    assert data.license == "apache-2.0" and "fapn" in data.tags
    assert {(r.metric_type, r.metric_value) for r in data.eval_results} == {
        ("mean_iou", 0.6116),
        ("boundary_mean_iou", 0.5836),
        ("accuracy", 0.95),
    }
    assert 'from_pretrained("org/fapn-r50", trust_remote_code=True)' in card.text and "import fapn_hf" in card.text
    assert "@inproceedings{huang2021fapn" in card.text


def test_card_describes_data_classes_limitations_install_and_both_usages():
    id2label, label2id = label_maps(["background", "blob", "box"])
    config = tiny_config(id2label=id2label, label2id=label2id, num_labels=3)
    demo = model_card(config, METRICS, dataset_name="demo", model_name="org/fapn-demo")
    assert "synthetic-shapes" in demo.data.tags and is_synthetic_demo(demo.data)
    for heading in ("## Training data", "## Classes", "## Intended use and limitations", "## Install", "## Usage"):
        assert heading in demo.text, heading
    assert "Synthetic shapes" in demo.text and "never seen a real photo" in demo.text
    assert "3 classes (ids in this order): `background`, `blob`, `box`" in demo.text
    assert "pip install fapn_hf" in demo.text and "import fapn_hf" in demo.text
    assert 'from_pretrained("org/fapn-demo", trust_remote_code=True)' in demo.text

    cityscapes = model_card(preset_config("fapn-r50-pointrend", "cityscapes"), METRICS, dataset_name="cityscapes")
    assert not is_synthetic_demo(cityscapes.data) and "2,975 training and 500 validation images" in cityscapes.text
    assert "`road`, `sidewalk`" in cityscapes.text and "validate it on your own data" in cityscapes.text


def test_no_reported_figure_without_a_conversion_record():
    """The architecture of the authors' R50 model alone earns no reported figure: only weights converted from their
    release do (tests/test_convert_original.py)."""
    card = model_card(preset_config("fapn-r50-pointrend", "cityscapes"), METRICS, dataset_name="cityscapes")
    assert all(r.source_name is None for r in card.data.eval_results)
    assert "reported" not in card.text


def test_upload_plan_takes_the_model_files_and_leaves_pickles_and_checkpoints(run_folder):
    plan = plan_upload(run_folder, repo_id="org/fapn-demo")
    shipped_kernel = {f"{name}.py" for name in KERNEL_MODULES}
    assert {"deform_conv.py", "fapn_layers.py", "remote_code.py"} <= shipped_kernel
    assert set(plan.files) == shipped_kernel | {
        "config.json", "model.safetensors", "preprocessor_config.json", "metrics.json",
        "configuration_fapn.py", "modeling_fapn.py", "image_processing_fapn.py",
    }  # fmt: skip
    assert {r.metric_type for r in plan.card.data.eval_results} == {"mean_iou", "boundary_mean_iou", "accuracy"}
    description = plan.describe()
    assert "model.safetensors" in description and "README.md" in description and "model-index" in description


def test_incomplete_folders_are_named(run_folder):
    (run_folder / "deform_conv.py").unlink()
    (run_folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing: preprocessor_config.json"):
        plan_upload(run_folder)


def test_missing_token_fails_clearly_and_touches_nothing(run_folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    before = _snapshot(run_folder)
    with pytest.raises(PermissionError, match="no Hugging Face token"):
        push_folder(plan_upload(run_folder), "org/fapn-demo")
    assert _snapshot(run_folder) == before


def _push(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fapn_hf", "push", *args],
        env={**os.environ, "HF_HOME": str(home), "HF_TOKEN": "", **env},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_dry_run_lists_files_sizes_and_metadata_offline(run_folder, tmp_path):
    before = _snapshot(run_folder)
    result = _push(["--model-dir", str(run_folder), "--repo-id", "org/fapn-demo", "--dry-run"], tmp_path / "home",
                   HF_HUB_OFFLINE="1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "would upload to org/fapn-demo" in result.stdout and "model.safetensors" in result.stdout
    assert "training_args.bin" not in result.stdout and "checkpoint" not in result.stdout
    assert "mean_iou" in result.stdout and "pipeline_tag: image-segmentation" in result.stdout
    assert _snapshot(run_folder) == before


def test_unreachable_hub_fails_clearly_and_touches_nothing(run_folder, tmp_path):
    before = _snapshot(run_folder)
    # Nothing listens on loopback port 9: the connection is refused at once.
    result = _push(["--model-dir", str(run_folder), "--repo-id", "org/fapn-demo", "--token", "hf_test"],
                   tmp_path / "home", HF_ENDPOINT="http://127.0.0.1:9")  # fmt: skip
    assert result.returncode == 1
    assert "cannot reach the Hugging Face Hub" in result.stderr and "Traceback" not in result.stderr
    assert _snapshot(run_folder) == before


def test_the_pushed_card_is_the_one_a_reload_would_parse(run_folder):
    plan = plan_upload(run_folder, repo_id="org/fapn-demo")
    reparsed = ModelCard(str(plan.card))
    assert reparsed.data.to_dict() == plan.card.data.to_dict()


@pytest.mark.parametrize("repo_id", ["fapn-demo", "org/fapn demo", "org/a/b", "org/--bad"])
def test_invalid_repo_id_is_a_one_line_error_in_dry_run_too(run_folder, tmp_path, repo_id):
    result = _push(["--model-dir", str(run_folder), "--repo-id", repo_id, "--dry-run"], tmp_path / "home",
                   HF_HUB_OFFLINE="1")  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: invalid model repo id {repo_id!r}"), result.stderr


def test_the_token_is_checked_before_uploading_is_announced(run_folder, tmp_path):
    before = _snapshot(run_folder)
    result = _push(["--model-dir", str(run_folder), "--repo-id", "org/fapn-demo"], tmp_path / "home",
                   HF_ENDPOINT="http://127.0.0.1:9")  # fmt: skip
    assert result.returncode == 1 and "uploading" not in result.stdout
    assert result.stderr.strip() == (
        "error: no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token; nothing was uploaded"
    )
    assert _snapshot(run_folder) == before
