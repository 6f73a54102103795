"""Fetch transformers' own common tests for the installed transformers, so the suite can run them on FaPN.

    python scripts/fetch_transformers_tests.py          # once; `make test` (and so `.ci/run`) does it first

The wheel of transformers carries no tests; its source distribution on the package registry carries the common
test files (`tests/test_modeling_common.py` & co., not `tests/models/`). This downloads that sdist with pip, pinned
to the installed version, and unpacks those files into a cache outside the repository as the package
`transformers_tests`, next to small stand-ins for the names the common files import from parts of transformers'
repository that the sdist does not ship (see `SHIMS`). When the cache is complete, nothing is downloaded. The tests
themselves never use the network: they import the cached files (`cached_tests_root`).

The cache lives in `$FAPN_HF_CACHE/transformers-tests/<version>` (default `~/.cache/fapn_hf`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version as installed_version
from pathlib import Path

PACKAGE = "transformers_tests"
FETCH_COMMAND = "python scripts/fetch_transformers_tests.py"
STAMP = "FETCHED"

# Stand-ins for what the common test files import from outside `tests/*.py`, written from what they use (the
# leading newline of each text is dropped when it is written).
SHIMS = {
    f"{PACKAGE}/__init__.py": '"""transformers\' common tests, unpacked from its sdist by fapn_hf."""\n',
    f"{PACKAGE}/utils/__init__.py": "",
    f"{PACKAGE}/utils/test_configuration_utils.py": '''
"""Stand-in for transformers' tests/utils/test_configuration_utils.py (not in the sdist).

`ConfigTester.check_config_arguments_init` builds a config from these arguments of `PreTrainedConfig` (transformers 5)
and checks that each one is kept; it returns early for configs with sub-configs.
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "is_encoder_decoder": True,
    "architectures": ["BertModel"],
    "id2label": {0: "label", 1: "other"},
    "label2id": {"label": 0, "other": 1},
    "problem_type": "regression",
}
''',
    f"{PACKAGE}/generation/__init__.py": "",
    f"{PACKAGE}/generation/test_utils.py": '''
"""Stand-in for transformers' tests/generation/test_utils.py (not in the sdist)."""


class GenerationTesterMixin:
    """The generate() tests; the common model tests only check whether a tester inherits this class (models that
    cannot generate must not)."""
''',
    f"{PACKAGE}/exporters/__init__.py": "",
    f"{PACKAGE}/exporters/test_export.py": '''
"""Stand-in for transformers' tests/exporters/test_export.py (not in the sdist)."""


class ExportTesterMixin:
    """Base class of `ModelTesterMixin`; the real one adds `torch.export` tests, which this stand-in does not carry
    (fapn_hf tests its export to ONNX through torch.export itself)."""
''',
    "utils/fetch_hub_objects_for_ci.py": '''
"""Stand-in for transformers' utils/fetch_hub_objects_for_ci.py (not in the sdist)."""


def url_to_local_path(url, return_url_if_not_found=True):
    """transformers' CI maps fixture URLs to pre-fetched files; offline, a URL stays a URL (only tests that
    download fixtures use it, and fapn_hf runs none of them)."""
    if return_url_if_not_found:
        return url
    raise FileNotFoundError(f"no local copy of {url}")
''',
}


def cache_root(transformers_version: str | None = None) -> Path:
    """Where the common tests of `transformers_version` (default: the installed one) are cached."""
    base = Path(os.environ.get("FAPN_HF_CACHE", Path.home() / ".cache" / "fapn_hf"))
    return base / "transformers-tests" / (transformers_version or installed_version("transformers"))


def cached_tests_root() -> Path:
    """The folder holding the package `transformers_tests` for the installed transformers; raises
    `FileNotFoundError` naming the command that fetches it when it is missing."""
    root = cache_root()
    if not (root / STAMP).is_file():
        raise FileNotFoundError(
            f"transformers' common tests for transformers {installed_version('transformers')} are not in {root}. "
            f"Fetch them once with `{FETCH_COMMAND}` (`make test` does it first)."
        )
    return root


def download_sdist(transformers_version: str, folder: Path) -> Path:
    """The sdist of transformers `transformers_version`, downloaded by pip into `folder`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", "--dest"]
    command += [str(folder), f"transformers=={transformers_version}"]
    # Without build isolation pip reads the sdist's metadata with the setuptools at hand; where there is none, it
    # fetches one into an isolated build environment.
    if subprocess.run([*command, "--no-build-isolation"], capture_output=True).returncode != 0:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"pip could not download the transformers {transformers_version} sdist:\n{result.stderr}"
            )
    archives = sorted(folder.glob(f"transformers-{transformers_version}.tar.gz"))
    if not archives:
        raise RuntimeError(f"pip downloaded no transformers-{transformers_version}.tar.gz into {folder}")
    return archives[0]


def unpack_common_tests(archive: Path, destination: Path) -> list[str]:
    """Extracts the top-level `tests/*.py` files of the sdist into `destination/transformers_tests`."""
    package = destination / PACKAGE
    package.mkdir(parents=True)
    names = []
    with tarfile.open(archive) as sdist:
        for member in sdist.getmembers():
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                source = sdist.extractfile(member)
                (package / parts[2]).write_bytes(source.read())
                names.append(parts[2])
    if "test_modeling_common.py" not in names:
        raise RuntimeError(f"{archive.name} has no tests/test_modeling_common.py")
    return sorted(names)


def fetch(force: bool = False) -> Path:
    """Makes the cache for the installed transformers complete and returns its root."""
    transformers_version = installed_version("transformers")
    root = cache_root(transformers_version)
    if (root / STAMP).is_file() and not force:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as work:
        work = Path(work)
        archive = download_sdist(transformers_version, work / "download")
        staging = work / "staging"
        names = unpack_common_tests(archive, staging)
        for relative, text in SHIMS.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text.lstrip("\n"))
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        (staging / STAMP).write_text(f"{archive.name} sha256:{digest}\n" + "\n".join(names) + "\n")
        if (root / STAMP).is_file() and not force:
            return root  # another process completed it meanwhile
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)  # in one step: a cache is complete or absent
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="download again even if the cache is complete")
    args = parser.parse_args(argv)
    try:
        root = fetch(force=args.force)
    except RuntimeError as error:
        raise SystemExit(f"error: {error}") from error
    print(f"transformers {installed_version('transformers')} common tests: {root / PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
