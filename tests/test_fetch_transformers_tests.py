"""The fetch step for transformers' common tests: what it unpacks from an sdist, the stand-ins it writes, and the
message when nothing is cached. A fabricated sdist stands in for the download."""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_transformers_tests.py"


@pytest.fixture
def fetcher(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("fetch_transformers_tests_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("FAPN_HF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(module, "installed_version", lambda name: "9.9.9")
    return module


def _fake_sdist(folder: Path) -> Path:
    archive = folder / "transformers-9.9.9.tar.gz"
    files = {
        "transformers-9.9.9/tests/test_modeling_common.py": "from .generation.test_utils import X\n",
        "transformers-9.9.9/tests/test_configuration_common.py": "X = 1\n",
        "transformers-9.9.9/tests/models/bert/test_modeling_bert.py": "raise SystemExit\n",
        "transformers-9.9.9/tests/fixtures/data.json": "{}\n",
        "transformers-9.9.9/src/transformers/__init__.py": "\n",
    }
    with tarfile.open(archive, "w:gz") as sdist:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    return archive


def test_fetch_unpacks_the_common_test_files_and_writes_the_stand_ins(fetcher, monkeypatch, tmp_path):
    downloads = []

    def download(version, folder):
        downloads.append(version)
        folder.mkdir(parents=True)
        return _fake_sdist(folder)

    monkeypatch.setattr(fetcher, "download_sdist", download)
    with pytest.raises(FileNotFoundError, match=r"transformers 9\.9\.9 .*python scripts/fetch_transformers_tests\.py"):
        fetcher.cached_tests_root()
    root = fetcher.fetch()
    assert root == tmp_path / "cache" / "transformers-tests" / "9.9.9" == fetcher.cached_tests_root()
    package = root / "transformers_tests"
    assert sorted(p.name for p in package.glob("*.py")) == [
        "__init__.py", "test_configuration_common.py", "test_modeling_common.py",
    ]  # fmt: skip
    assert not (package / "models").exists() and not (root / "src").exists()
    for relative in fetcher.SHIMS:
        compile((root / relative).read_text(), relative, "exec")  # every stand-in is valid Python
    namespace = {}
    exec((package / "utils" / "test_configuration_utils.py").read_text(), namespace)
    assert namespace["config_common_kwargs"]["return_dict"] is False
    assert "sha256:" in (root / "FETCHED").read_text()
    fetcher.fetch()  # complete: nothing is downloaded again
    assert downloads == ["9.9.9"]
