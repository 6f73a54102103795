"""The package as a registry release: `python -m build` makes a wheel and an sdist whose metadata is complete."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_wheel_and_sdist_build_with_complete_metadata(tmp_path):
    source = tmp_path / "source"  # a copy, so the build's egg-info and build/ never land in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "fapn_hf", source / "fapn_hf", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fapn_hf-*-py3-none-any.whl")
    (sdist,) = (tmp_path / "dist").glob("fapn_hf-*.tar.gz")

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_name = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(metadata_name))
        entry_points = archive.read(metadata_name.replace("METADATA", "entry_points.txt")).decode()
    assert {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "fapn_hf").rglob("*.py")} <= set(names)
    assert metadata["Name"] == "fapn_hf" and metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == ">=3.10" and metadata["Author"]
    assert metadata["Description-Content-Type"] == "text/markdown" and "# fapn_hf" in metadata.get_payload()
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in metadata.get_all("Classifier"))
    assert any(url.startswith("Paper, https://arxiv.org/abs/2108.07058") for url in metadata.get_all("Project-URL"))
    # Every command is a console script of fapn_hf.cli (python -m fapn_hf runs the same functions).
    for command in (
        "evaluate",
        "predict",
        "create-model",
        "push",
        "convert",
        "export-onnx",
        "benchmark",
        "build-space",
    ):
        function = command.replace("-", "_")
        assert f"fapn-{command} = fapn_hf.cli:{function}_main" in entry_points, entry_points
    requires = metadata.get_all("Requires-Dist")
    assert any(r.startswith("torch>=") for r in requires) and any(r.startswith("transformers>=") for r in requires)

    with tarfile.open(sdist) as archive:
        members = {Path(m.name).relative_to(Path(m.name).parts[0]).as_posix() for m in archive.getmembers()}
    assert {"pyproject.toml", "README.md", "PKG-INFO", "fapn_hf/modeling/modeling_fapn.py"} <= members
