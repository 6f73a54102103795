"""Every weight that `from_pretrained` creates, in every family, starts as a fresh model's does.

transformers 5 initialises only the leaf modules holding tensors a checkpoint lacks, each with the model's
`_init_weights`; whatever that misses stays uninitialised memory (NaN, 1e25). Three ways to get such tensors, each
run on every registered family (`fapn_hf.families.FAMILIES`):

- re-heading: `from_pretrained(folder, num_labels=..., ignore_mismatched_sizes=True)`;
- a checkpoint without its backbone (the MaskFormer + FaPN defect: its timm backbone came back as 40-48 non-finite or
  huge tensors), with a timm and with a transformers backbone;
- a checkpoint with the backbone only (every other weight missing).

The oracle is a freshly built model of the same config: a tensor whose fresh value is the same under every seed
(zeros, ones, BatchNorm statistics, the loss's class weights, timm's zero-initialised last BatchNorm of a block) must
come back equal to it; any other must be finite and drawn like it (mean and standard deviation, pooled over the
loads, within six standard errors). Tensors the file holds come back bit-identical to the file (compared as
`save_pretrained` writes them again). FaPN's per-layer detectron2 schemes are checked against their
formulas in tests/test_weight_loading.py.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from conftest import tiny_config, tiny_resnet_backbone_config
from safetensors.torch import load_file, save_file
from test_maskformer_fapn import tiny_maskformer_config
from test_modeling_fapn_rcnn import tiny_rcnn_config
from test_weight_loading import REPEATS

from fapn_hf.families import FAMILIES
from fapn_hf.modeling.backbone_utils import timm_backbone_config

# Small configs of each family, by backbone kind (both with 5 classes, so that re-heading to 8 changes the head).
SMALL_CONFIGS: dict[str, dict[str, Callable[[], object]]] = {
    "fapn": {
        "timm": lambda: tiny_config(num_labels=5, use_point_rend=True),
        "transformers": lambda: tiny_config(
            num_labels=5, use_point_rend=True, backbone=None, backbone_config=tiny_resnet_backbone_config()
        ),
    },
    "maskformer_fapn": {
        "timm": tiny_maskformer_config,
        "transformers": lambda: tiny_maskformer_config(backbone_config=tiny_resnet_backbone_config()),
    },
    # Panoptic FPN: every head of the family (box, mask, semantic); 3 thing and 2 stuff classes.
    "fapn_rcnn": {
        "timm": lambda: tiny_rcnn_config("panoptic_fpn", backbone_config=timm_backbone_config("resnet18")),
        "transformers": lambda: tiny_rcnn_config("panoptic_fpn"),
    },
}
NEW_NUM_LABELS = 8
SCENARIOS = ("re-heading", "missing backbone", "missing head")
# The fast tier loads each case twice; the slow tier REPEATS (10) times.
FAST_REPEATS = 2


def test_small_configs_cover_every_family():
    assert set(SMALL_CONFIGS) == set(FAMILIES)


def backbone_prefix(model: torch.nn.Module) -> str:
    """The state-dict prefix of the model's backbone (`fapn.backbone.`, `model.pixel_level_module.encoder.`)."""
    backbone = model.backbone_module()
    return next(name for name, module in model.named_modules() if module is backbone) + "."


def save_case(family_name: str, backbone: str, scenario: str, folder) -> dict[str, torch.Tensor]:
    """Saves a model of the family whose every floating tensor is moved off its initial value (so a re-initialised
    tensor cannot pass for a loaded one), drops what the scenario drops from model.safetensors, and returns the file's
    tensors."""
    torch.manual_seed(0)
    model = FAMILIES[family_name].head_class(SMALL_CONFIGS[family_name][backbone]())
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(1.0)
    model.save_pretrained(folder)
    state = load_file(str(folder / "model.safetensors"))
    prefix = backbone_prefix(model)
    if scenario == "missing backbone":
        state = {key: value for key, value in state.items() if not key.startswith(prefix)}
    elif scenario == "missing head":
        state = {key: value for key, value in state.items() if key.startswith(prefix)}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return state


def load_case(family_name: str, scenario: str, folder) -> tuple[torch.nn.Module, set[str]]:
    """The saved case loaded by the family's Auto class, and the tensors transformers created rather than loaded
    (missing and mismatched keys, module names)."""
    kwargs = {"num_labels": NEW_NUM_LABELS, "ignore_mismatched_sizes": True} if scenario == "re-heading" else {}
    model, info = FAMILIES[family_name].auto_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    assert not info["unexpected_keys"], info["unexpected_keys"]
    mismatched = {entry if isinstance(entry, str) else entry[0] for entry in info["mismatched_keys"]}
    return model, set(info["missing_keys"]) | mismatched


def assert_drawn_like(name: str, reloaded: list[torch.Tensor], fresh: list[torch.Tensor]) -> None:
    """`reloaded` (one tensor per load) is finite and distributed as `fresh` (one per fresh model): equal to it when
    the fresh value does not depend on the seed, else the same mean and standard deviation within six standard errors
    of the pooled samples."""
    for tensor in reloaded:
        assert torch.isfinite(tensor.double()).all(), f"{name} is not finite: {tensor.flatten()[:5]}"
    if all(torch.equal(fresh[0], other) for other in fresh[1:]):
        for tensor in reloaded:
            assert torch.equal(tensor, fresh[0]), (
                f"{name}: {tensor.flatten()[:5]}, a fresh model's {fresh[0].flatten()[:5]}"
            )
        return
    drawn = torch.cat([tensor.double().flatten() for tensor in reloaded])
    expected = torch.cat([tensor.double().flatten() for tensor in fresh])
    count = min(drawn.numel(), expected.numel())
    std = expected.std().item()
    assert abs(drawn.mean().item() - expected.mean().item()) <= 6 * std * math.sqrt(2 / count), (
        f"{name}: mean {drawn.mean().item():.4g}, fresh models' {expected.mean().item():.4g} (std {std:.3g})"
    )
    # The log of a sample standard deviation has a standard error of about sqrt((kurtosis - 1) / (4n)): at most
    # sqrt(1 / (2n)) for normal and uniform draws; two samples, six standard errors.
    ratio = drawn.std().item() / std
    assert ratio > 0 and abs(math.log(ratio)) <= 6 * math.sqrt(1 / count), (
        f"{name}: std {drawn.std().item():.4g}, fresh models' {std:.4g}"
    )


def as_saved(model: torch.nn.Module, folder) -> dict[str, torch.Tensor]:
    """The model's tensors as `save_pretrained` writes them (checkpoint names: MaskFormer's decoder in transformers'
    layout, `out_proj` / `layers.N.fc1`; a tied tensor once)."""
    model.save_pretrained(folder)
    return load_file(str(folder / "model.safetensors"))


def check_initialisation(family_name: str, backbone: str, scenario: str, repeats: int, tmp_path) -> None:
    folder = tmp_path / "saved"
    state = save_case(family_name, backbone, scenario, folder)
    new: dict[str, list[torch.Tensor]] = {}
    fresh: dict[str, list[torch.Tensor]] = {}
    for attempt in range(repeats):
        torch.manual_seed(attempt)
        model, created = load_case(family_name, scenario, folder)
        saved = as_saved(model, tmp_path / "reloaded")
        kept = {key for key, value in state.items() if saved[key].shape == value.shape}
        for key in kept:
            assert torch.equal(saved[key], state[key]), f"{key} differs from the file"
        model_state = model.state_dict()
        backbone_keys = {name for name in model_state if name.startswith(backbone_prefix(model))}
        if scenario == "re-heading":
            assert model.config.num_labels == NEW_NUM_LABELS
            assert created and len(created) == len(state) - len(kept)  # the re-headed tensors, nothing else
        elif scenario == "missing backbone":
            assert created == backbone_keys
        else:
            assert created and not created & backbone_keys
        for name in created:  # an independent oracle for BatchNorm statistics
            if name.endswith(("running_mean", "running_var")):
                assert torch.all(model_state[name] == float(name.endswith("running_var"))), name
        torch.manual_seed(1000 + attempt)
        reference = type(model)(copy.deepcopy(model.config)).state_dict()
        for name in created:
            new.setdefault(name, []).append(model_state[name].detach().clone())
            fresh.setdefault(name, []).append(reference[name])
    for name in new:
        assert_drawn_like(name, new[name], fresh[name])


CASES = [
    pytest.param(family, backbone, scenario, id=f"{family}-{backbone}-{scenario.replace(' ', '-')}")
    for family in SMALL_CONFIGS
    for backbone in ("timm", "transformers")
    for scenario in SCENARIOS
    if backbone == "timm" or scenario == "missing backbone"
]


@pytest.mark.parametrize("family_name, backbone, scenario", CASES)
def test_created_weights_start_as_a_fresh_models(family_name, backbone, scenario, tmp_path):
    check_initialisation(family_name, backbone, scenario, FAST_REPEATS, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("family_name, backbone, scenario", CASES)
def test_created_weights_start_as_a_fresh_models_in_ten_loads(family_name, backbone, scenario, tmp_path):
    check_initialisation(family_name, backbone, scenario, REPEATS, tmp_path)


def test_the_oracle_refuses_uninitialised_memory_and_wrong_distributions():
    """`assert_drawn_like` on the failures it exists for: garbage, a constant where the fresh model draws, a draw
    where it is constant, and a distribution of the wrong scale."""
    torch.manual_seed(0)
    fresh = [torch.randn(64, 32) * 0.05 for _ in range(2)]
    assert_drawn_like("ok", [torch.randn(64, 32) * 0.05 for _ in range(2)], fresh)
    failures = {
        "garbage": [torch.full((64, 32), 1e25), torch.full((64, 32), float("nan"))],
        "constant": [torch.zeros(64, 32)] * 2,
        "scale": [torch.randn(64, 32) * 0.02 for _ in range(2)],
        "shifted": [torch.randn(64, 32) * 0.05 + 0.05 for _ in range(2)],
    }
    for name, drawn in failures.items():
        with pytest.raises(AssertionError):
            assert_drawn_like(name, drawn, fresh)
    with pytest.raises(AssertionError):
        assert_drawn_like("not the constant", [torch.randn(8)] * 2, [torch.ones(8)] * 2)
