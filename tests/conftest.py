"""Shared fixtures: tiny FaPN configurations that build and run in well under a second on a CPU."""

from __future__ import annotations

import pytest
import torch

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


def set_backbone_gammas_to_one(model: torch.nn.Module) -> None:
    """timm zero-initialises the last BN of every residual block, which blocks gradients into the branch; trained
    trunks have non-zero gammas, so tests that follow gradients set them to one."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


__all__ = ["fapn_hf", "set_backbone_gammas_to_one", "tiny_config"]
