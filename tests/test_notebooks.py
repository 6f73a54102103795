"""The tutorial notebooks: committed without outputs, with a parameter cell, and running top to bottom offline.

Executing them needs the `notebooks` extra (nbclient, nbformat, ipykernel), which the `test` extra includes; a
missing runner or `python3` kernel is a failure that says what to install.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ("01_inference.ipynb", "02_finetune_with_trainer.ipynb", "03_share_on_the_hub.ipynb", "04_detection.ipynb")
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 300


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _kernel_problem() -> str | None:
    """Why the `python3` kernel cannot run the notebooks with this interpreter, or None when it can.

    ipykernel installed in this environment provides the `python3` kernel spec (under `sys.prefix`), whose command
    `python` jupyter_client replaces with `sys.executable`: the kernel then sees the same packages as the tests.
    """
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError:
        return "jupyter_client is not installed"
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        return f"no Jupyter kernel named {KERNEL_NAME!r} (install ipykernel)"
    interpreter = spec.argv[0]
    if interpreter not in {"python", "python3", sys.executable}:
        return f"the {KERNEL_NAME!r} kernel runs {interpreter}, not this interpreter ({sys.executable})"
    return None


def test_the_tutorial_notebooks_exist():
    assert {path.name for path in NOTEBOOKS} >= set(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_committed_without_outputs(path):
    for index, cell in enumerate(_cells(path)):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {index} of {path.name} has outputs: clear them before committing"
            assert cell["execution_count"] is None, f"cell {index} of {path.name} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_has_one_parameter_cell_near_the_top(path):
    code_cells = [cell for cell in _cells(path) if cell["cell_type"] == "code"]
    tagged = [i for i, cell in enumerate(code_cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one code cell tagged 'parameters', found {len(tagged)}"
    assert tagged[0] <= 1, f"the parameter cell of {path.name} should be among its first two code cells"


def _execute(path: Path, monkeypatch: pytest.MonkeyPatch, parameters: str = "") -> None:
    """Runs the notebook at `path` top to bottom offline; `parameters` (code) is appended to its parameter cell."""
    import nbclient
    import nbformat

    problem = _kernel_problem()
    assert problem is None, f"cannot run the notebooks: {problem}"
    # The kernel inherits the environment: no Hub access, so the notebooks take their offline paths.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(path, as_version=4)
    if parameters:
        cell = next(cell for cell in notebook.cells if "parameters" in cell.get("metadata", {}).get("tags", []))
        cell.source += "\n" + parameters
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name} failed:\n{str(error)[-4000:]}")
    print(f"{path.name}: {time.perf_counter() - start:.0f} s")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs_offline(path, monkeypatch):
    _execute(path, monkeypatch)


def test_inference_notebook_takes_a_maskformer_fapn_model(tmp_path, monkeypatch):
    """The inference tutorial with a MaskFormer + FaPN folder in place of the FaPN one (pipeline, TTA, overlays)."""
    from test_maskformer_fapn import tiny_maskformer_config

    from fapn_hf import MaskFormerFaPNForInstanceSegmentation, MaskFormerFaPNImageProcessor
    from fapn_hf.labels import label_maps
    from fapn_hf.tasks.semantic.demo_data import DEMO_LABELS

    id2label, label2id = label_maps(list(DEMO_LABELS))
    folder = tmp_path / "maskformer-fapn"
    MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config(id2label=id2label, label2id=label2id)).save_pretrained(
        folder
    )
    MaskFormerFaPNImageProcessor(size={"shortest_edge": 192, "longest_edge": 256}).save_pretrained(folder)
    _execute(NOTEBOOK_DIR / "01_inference.ipynb", monkeypatch, f"LOCAL_MODEL_DIR = {str(folder)!r}")


def test_finetune_notebook_trains_maskformer_fapn(monkeypatch):
    """The Trainer tutorial with the MaskFormer + FaPN demo recipe in place of FaPN's (train, evaluate with and
    without TTA, curves, overlays, the folder)."""
    parameters = 'RECIPE = "recipes/demo_maskformer_fapn.yaml"\nMAX_STEPS = 6\nEVAL_STEPS = 3'
    _execute(NOTEBOOK_DIR / "02_finetune_with_trainer.ipynb", monkeypatch, parameters)


def test_share_notebook_takes_a_trained_maskformer_fapn_folder(tmp_path, monkeypatch):
    """The sharing tutorial on a folder `fapn-train` wrote for a MaskFormer + FaPN (card, upload plan, dry-run push,
    remote code in a process without the package)."""
    from fapn_hf.training.args import parse_arguments
    from fapn_hf.training.run import run_training

    overrides = dict(max_steps=2, eval_steps=2, save_strategy="no", report_to="none", dataloader_num_workers=0)
    overrides |= dict(demo_train_samples=16, demo_validation_samples=4, num_visualizations=1)
    run = run_training(*parse_arguments([], REPO_ROOT / "recipes" / "demo_maskformer_fapn.yaml",
                                        output_dir=str(tmp_path / "trained"), **overrides))  # fmt: skip
    _execute(NOTEBOOK_DIR / "03_share_on_the_hub.ipynb", monkeypatch, f"SOURCE_MODEL = {str(run.output_dir)!r}")


def test_detection_notebook_trains_a_panoptic_fpn(monkeypatch):
    """The detector tutorial with Panoptic FPN in place of Mask R-CNN (PQ, the panoptic pipeline and drawing)."""
    parameters = 'PRESET = "fapn-panoptic-fpn-demo"\nMAX_STEPS = 4\nTRAIN_SAMPLES = 16\nVALIDATION_SAMPLES = 4'
    _execute(NOTEBOOK_DIR / "04_detection.ipynb", monkeypatch, parameters)
