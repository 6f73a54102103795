"""Shared fixtures: tiny FaPN configurations that build and run in well under a second on a CPU."""

from __future__ import annotations

import importlib.util
import os
import sys

# One intra-op thread: the suite's convolutions are tiny, and two OpenMP threads on a busy 2-core machine run them
# many times slower (set before torch is imported, so subprocesses started by the tests inherit it too).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# No test reaches the network: a Hub id that is not cached fails at once instead of after the client's timeouts
# and retries (23 s per attempt on a machine without internet). Set before huggingface_hub reads it at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from pathlib import Path

import pytest
import torch
from transformers import ResNetConfig

import fapn_hf
from fapn_hf import FaPNConfig


def tiny_config(**overrides) -> FaPNConfig:
    """FaPN on timm's resnet18 with a 32-wide neck: the real architecture at a fraction of the cost."""
    settings = dict(
        backbone="resnet18",
        num_labels=4,
        neck_channels=32,
        head_channels=64,
        deformable_groups=4,
        point_rend_train_num_points=64,
        point_rend_subdivision_num_points=256,
    )
    settings.update(overrides)
    return FaPNConfig(**settings)


def tiny_resnet_backbone_config() -> ResNetConfig:
    """A tiny transformers ResNet in the MSRA layout of the original checkpoints (stride in the first 1x1 conv)."""
    return ResNetConfig(
        embedding_size=16,
        hidden_sizes=[32, 64, 96, 128],
        depths=[1, 1, 1, 1],
        layer_type="bottleneck",
        downsample_in_bottleneck=True,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def set_backbone_gammas_to_one(model: torch.nn.Module) -> None:
    """timm zero-initialises the last BN of every residual block, which blocks gradients into the branch; trained
    trunks have non-zero gammas, so tests that follow gradients set them to one."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)


def load_transformers_common_tests() -> None:
    """Makes the cached copy of transformers' common tests importable as `transformers_tests`.

    Raises `FileNotFoundError` naming the command that fetches them (scripts/fetch_transformers_tests.py) when they
    are not cached: the suite fails rather than silently skipping them.
    """
    script = Path(__file__).resolve().parents[1] / "scripts" / "fetch_transformers_tests.py"
    spec = importlib.util.spec_from_file_location("fetch_transformers_tests", script)
    fetcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetcher)
    root = str(fetcher.cached_tests_root())
    if root not in sys.path:
        sys.path.insert(0, root)


# Whole modules that train, export, build packages, start servers or run notebooks: `make test-fast` leaves them out
# (with tests marked `@pytest.mark.slow` elsewhere); `make test` and CI run everything.
SLOW_MODULES = frozenset(
    {
        "test_benchmark.py",
        "test_convert_original.py",
        "test_convert_maskformer.py",
        "test_convert_rcnn.py",
        "test_detection_training.py",
        "test_hub.py",
        "test_modeling_fapn_common.py",
        "test_modeling_maskformer_fapn_common.py",
        "test_modeling_fapn_rcnn_common.py",
        "test_notebooks.py",
        "test_onnx.py",
        "test_packaging.py",
        "test_push.py",
        "test_space.py",
        "test_space_folder.py",
        "test_training.py",
        "test_maskformer_training.py",
    }
)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # `make test-fast` (-m "not slow") does not even import the integration modules (gradio, onnx, notebooks).
    if config.getoption("markexpr") == "not slow" and collection_path.name in SLOW_MODULES:
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


__all__ = [
    "fapn_hf",
    "load_transformers_common_tests",
    "set_backbone_gammas_to_one",
    "tiny_config",
    "tiny_resnet_backbone_config",
]
