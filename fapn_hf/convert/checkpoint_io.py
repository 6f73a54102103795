"""Reading the authors' checkpoints safely: a detectron2 `.pth` through `torch.load(weights_only=True)` (a refused
file is named, and opened with full pickle only when the caller trusts it), a detectron2/Caffe2 `.pkl` through an
unpickler that builds numpy arrays, numbers, strings and containers and nothing else."""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted; the message says which file and why."""


def _numpy_core() -> Any:
    """numpy's core package: `numpy._core` (numpy 2) or `numpy.core` (numpy 1)."""
    try:
        import numpy._core as core
    except ImportError:  # numpy 1.x
        import numpy.core as core
    return core


def _allowed_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only callables a `.pkl` checkpoint may name: numpy's array and scalar constructors, `dtype`,
    `OrderedDict`, and `_codecs.encode` (protocol-2 pickles store array bytes through it). Released files were
    written with numpy 1.x (`numpy.core...`); numpy 2 writes `numpy._core...`: both names are accepted."""
    import _codecs

    core = _numpy_core()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dtypes and scalars, numbers, strings and containers; refuses anything else."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # detectron2/Caffe2 pickles were often written by Python 2
        self.path = path
        self.allowed = _allowed_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise CheckpointError(
            f"{self.path}: refusing to unpickle {module}.{name}: a .pkl checkpoint may only hold numpy arrays, "
            "numbers, strings and containers (the restricted reader builds nothing else)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"{self.path}: refusing a pickle with persistent references ({pid!r})")


def _reason(error: BaseException) -> str:
    """The telling part of a torch.load failure (its messages run to paragraphs)."""
    message = str(error)
    refused = re.search(r"GLOBAL ([\w.]+)", message)
    if refused:
        return f"it holds {refused.group(1)}, which is neither a tensor nor a plain container"
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", message, flags=re.DOTALL)
    if unpickler:
        return unpickler.group(1)
    first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return first_line.split(". ")[0]


def _load_pth(path: Path, trust_pickle: bool) -> Any:
    unreadable = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, OverflowError)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_pickle:
            raise CheckpointError(
                f"{path}: torch.load(weights_only=True) refused it: {_reason(error)}. Opening it with full pickle "
                "would run code from the file; if you trust it, re-run with --trust_pickle (or trust_pickle=True)"
            ) from None
        warnings.warn(
            f"{path}: loading with full pickle because trust_pickle is set ({_reason(error)}): this runs code from "
            "the file",
            stacklevel=3,
        )
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except unreadable as error:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({_reason(error)})") from None
    except unreadable as error:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({_reason(error)})") from None


def _load_pkl(path: Path) -> Any:
    with path.open("rb") as file:
        try:
            return _NumpyOnlyUnpickler(file, path).load()
        except CheckpointError:
            raise
        except Exception as error:  # truncated or corrupt files fail in many ways inside pickle
            raise CheckpointError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from None


@dataclass
class Checkpoint:
    """An original checkpoint: its model tensors by original name, its other top-level entries, its file."""

    path: Path
    tensors: dict[str, torch.Tensor]
    extras: dict[str, Any]
    sha256: str

    @property
    def keys(self) -> list[str]:
        return list(self.tensors)


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> Checkpoint:
    """Reads a detectron2 checkpoint: `{"model": state_dict, ...}` (or a bare state dict) in a `.pth` file
    (`torch.load(weights_only=True)`) or a `.pkl` file of numpy arrays (restricted unpickler).

    Raises `CheckpointError` naming the file for a missing, unreadable or refused file, or one without a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    is_torch_zip = zipfile.is_zipfile(path)
    if path.suffix == ".pkl" and not is_torch_zip:
        content = _load_pkl(path)
    elif path.suffix in (".pth", ".pt", ".pkl"):
        content = _load_pth(path, trust_pickle)
    else:
        raise CheckpointError(f"{path}: expected a detectron2 .pth or .pkl checkpoint, got a {path.suffix!r} file")
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path}: expected a dict holding a 'model' state dict, got {type(content).__name__}")
    if isinstance(content.get("model"), Mapping):
        state, extras = content["model"], {k: v for k, v in content.items() if k != "model"}
    elif content and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in content.values()):
        state, extras = content, {}
    else:
        raise CheckpointError(
            f"{path}: no 'model' state dict; its top-level entries are {sorted(map(str, content))[:10]}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: model entry {name!r} is a {type(value).__name__}, not an array")
        tensors[str(name)] = value
    return Checkpoint(path, tensors, extras, file_sha256(path))


__all__ = ["Checkpoint", "CheckpointError", "file_sha256", "read_checkpoint"]
