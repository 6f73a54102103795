"""Weights that load right: every weight a model creates (fresh, re-headed, partially loaded) follows detectron2's
initialisation, loaded weights stay bit-identical to the file, and a diverging training run stops.

The expected scheme of each parameter is derived here from its name and shape alone (fan-in and fan-out computed
from the weight's shape), independently of the tags the model uses to pick its initialisation.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import tiny_config, tiny_resnet_backbone_config
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSemanticSegmentation, TrainerCallback

from fapn_hf import FaPNForSemanticSegmentation, FaPNModel
from fapn_hf.training.args import DataArguments, FaPNTrainingArguments, ModelArguments
from fapn_hf.training.builders import build_model
from fapn_hf.training.run import run_training

REPEATS = 10

# (parameter-name pattern, scheme), first match wins. Names are those of FaPNForSemanticSegmentation without the
# backbone; "dcn" is the deformable conv's own rule U(+-1 / sqrt(fan_in)).
SCHEMES = [
    (r"\.bias$", "zeros"),
    (r"\.norm\.weight$", "ones"),
    (r"deform_conv\.offset_mask_conv\.weight$", "zeros"),
    (r"deform_conv\.weight$", "dcn"),
    (r"^fapn\.neck\..*\.weight$", "xavier"),
    (r"^decode_head\.(scale_heads|predictor)\..*\.weight$", "msra"),
    (r"^point_head\.layers\.\d+\.weight$", "msra"),
    (r"^point_head\.predictor\.weight$", "normal"),
]


def expected_scheme(name: str) -> str:
    for pattern, scheme in SCHEMES:
        if re.search(pattern, name):
            return scheme
    raise AssertionError(f"no expected initialisation for {name}")


def fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive_field = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive_field, weight.shape[0] * receptive_field


def assert_initialised(name: str, tensor: torch.Tensor) -> None:
    """`tensor` is a plausible draw of its scheme: exact for constants, sample statistics within a few standard
    errors otherwise."""
    tensor = tensor.detach().double()
    assert torch.isfinite(tensor).all(), f"{name} is not finite"
    scheme = expected_scheme(name)
    if scheme == "zeros":
        assert torch.count_nonzero(tensor) == 0, f"{name} should be zeros"
        return
    if scheme == "ones":
        assert torch.all(tensor == 1), f"{name} should be ones"
        return
    fan_in, fan_out = fans(tensor)
    if scheme == "xavier":  # detectron2's c2_xavier_fill: kaiming_uniform(a=1) = U(+-sqrt(3 / fan_in))
        bound = math.sqrt(3.0 / fan_in)
    elif scheme == "dcn":
        bound = 1.0 / math.sqrt(fan_in)
    else:
        bound = None
    if bound is not None:
        assert tensor.abs().max() <= bound * (1 + 1e-6), f"{name}: |w| exceeds the uniform bound {bound}"
        std = bound / math.sqrt(3.0)
    elif scheme == "msra":  # detectron2's c2_msra_fill: kaiming_normal(fan_out, relu) = N(0, 2 / fan_out)
        std = math.sqrt(2.0 / fan_out)
    else:  # "normal"
        std = 0.001
    n = tensor.numel()
    assert abs(tensor.mean().item()) <= 5 * std / math.sqrt(n), f"{name}: mean {tensor.mean().item()} (std {std})"
    relative_error = abs(tensor.std().item() / std - 1)
    assert relative_error <= 5 / math.sqrt(2 * n) + 0.01, f"{name}: std {tensor.std().item():.3g}, expected {std:.3g}"


def head_and_neck(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if ".backbone." not in f".{name}"}


def assert_head_and_neck_initialised(model: torch.nn.Module, only: str = "") -> None:
    checked = [name for name in head_and_neck(model) if name.startswith(only)]
    assert checked
    for name in checked:
        assert_initialised(name, model.get_parameter(name))


def assert_equal_to_file(model: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str = "") -> int:
    """Every tensor of the model that the file holds (under `prefix` + name) is bit-identical; returns the count."""
    compared = 0
    for name, tensor in model.state_dict().items():
        key = prefix + name
        if key in state and state[key].shape == tensor.shape:
            assert torch.equal(tensor, state[key]), f"{name} differs from the file"
            compared += 1
    return compared


CONFIGS = {
    "fapn-pointrend": dict(use_point_rend=True, num_labels=19, neck_channels=64),
    "fpn-gn": dict(use_fam=False, use_fsm=False, neck_norm="GN", neck_channels=64, num_labels=19),
    "fam-bn": dict(use_fsm=False, neck_norm="BN", num_labels=19),
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_a_fresh_model_gives_every_layer_its_detectron2_initialisation(overrides):
    model = FaPNForSemanticSegmentation(tiny_config(**overrides))
    assert_head_and_neck_initialised(model)


def test_fresh_batch_norm_statistics_in_the_neck_are_reset():
    model = FaPNForSemanticSegmentation(tiny_config(neck_norm="BN"))
    norms = [m for n, m in model.named_modules() if n.startswith("fapn.neck") and isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    for norm in norms:
        assert torch.all(norm.running_mean == 0) and torch.all(norm.running_var == 1)


def test_initialisation_is_deterministic_under_a_seed():
    torch.manual_seed(7)
    first = FaPNForSemanticSegmentation(tiny_config(use_point_rend=True)).state_dict()
    torch.manual_seed(7)
    second = FaPNForSemanticSegmentation(tiny_config(use_point_rend=True)).state_dict()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


@pytest.fixture(scope="module")
def saved_19_class_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cityscapes-like")
    torch.manual_seed(0)
    model = FaPNForSemanticSegmentation(tiny_config(num_labels=19))
    _randomise_head_and_neck(model)
    model.save_pretrained(folder)
    return folder


def _randomise_head_and_neck(model: torch.nn.Module) -> None:
    """Stands in for training: no weight of the file keeps its initial value (so a re-initialised one shows)."""
    with torch.no_grad():
        for parameter in head_and_neck(model).values():
            parameter.add_(torch.randn_like(parameter) * 0.1)


def _labels(batch: int, size: int, num_labels: int) -> torch.Tensor:
    return torch.randint(0, num_labels, (batch, size, size))


@pytest.mark.slow
def test_reheading_a_saved_model_initialises_the_new_predictor(saved_19_class_model):
    """`from_pretrained(<19-class folder>, num_labels=150, ignore_mismatched_sizes=True)`, 10 times."""
    state = load_file(str(saved_19_class_model / "model.safetensors"))
    predictors = []
    for attempt in range(REPEATS):
        torch.manual_seed(attempt)
        model = AutoModelForSemanticSegmentation.from_pretrained(
            saved_19_class_model, num_labels=150, ignore_mismatched_sizes=True
        )
        assert model.config.num_labels == 150 and model.decode_head.predictor.conv.out_channels == 150
        assert_head_and_neck_initialised(model, only="decode_head.predictor")
        assert assert_equal_to_file(model, state) == len(state) - 2  # all but the predictor's weight and bias
        predictors.append(model.decode_head.predictor.conv.weight.detach().clone())
        with torch.no_grad():
            loss = model(torch.randn(1, 3, 64, 64), labels=_labels(1, 64, 150)).loss
        assert torch.isfinite(loss) and loss < 100
    assert not torch.equal(predictors[0], predictors[1])  # fresh draws, not a fixed pattern


def test_reheading_is_deterministic_under_a_seed(saved_19_class_model):
    weights = []
    for _ in range(2):
        torch.manual_seed(123)
        model = AutoModelForSemanticSegmentation.from_pretrained(
            saved_19_class_model, num_labels=150, ignore_mismatched_sizes=True
        )
        weights.append(model.decode_head.predictor.conv.weight)
    assert torch.equal(*weights)


def test_a_plain_checkpoint_loads_into_a_point_rend_model(saved_19_class_model):
    state = load_file(str(saved_19_class_model / "model.safetensors"))
    for attempt in range(REPEATS):
        torch.manual_seed(attempt)
        model = FaPNForSemanticSegmentation.from_pretrained(saved_19_class_model, use_point_rend=True).eval()
        assert_head_and_neck_initialised(model, only="point_head")
        assert assert_equal_to_file(model, state) == len(state)
        with torch.no_grad():
            logits = model(torch.randn(1, 3, 64, 64)).logits
        assert torch.isfinite(logits).all()


def test_a_base_model_checkpoint_loads_into_the_segmentation_model(tmp_path):
    torch.manual_seed(0)
    base = FaPNModel(tiny_config(num_labels=19))
    _randomise_head_and_neck(base)
    base.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    for attempt in range(REPEATS):
        torch.manual_seed(attempt)
        model = FaPNForSemanticSegmentation.from_pretrained(tmp_path)
        assert_head_and_neck_initialised(model, only="decode_head")
        # The base model's keys lack the `fapn.` prefix of the segmentation model: transformers maps them.
        assert assert_equal_to_file(model.fapn, state) == len(state)
        with torch.no_grad():
            loss = model(torch.randn(1, 3, 64, 64), labels=_labels(1, 64, 19)).loss
        assert torch.isfinite(loss)


@pytest.mark.slow
def test_fine_tuning_a_saved_model_on_new_labels_builds_an_initialised_head(saved_19_class_model):
    """The library side of `fapn-train recipes/demo.yaml --model_name_or_path <saved> --labels a,b,c`."""
    state = load_file(str(saved_19_class_model / "model.safetensors"))
    for attempt in range(REPEATS):
        torch.manual_seed(attempt)
        model = build_model(ModelArguments(model_name_or_path=str(saved_19_class_model)), ["a", "b", "c"])
        assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
        assert_head_and_neck_initialised(model, only="decode_head.predictor")
        assert assert_equal_to_file(model, state) == len(state) - 2


@pytest.mark.slow
def test_fine_tuning_a_saved_model_trains_with_finite_losses(saved_19_class_model, tmp_path):
    """19 classes re-headed to the demo data's 6, trained for 3 steps."""
    model_args = ModelArguments(model_name_or_path=str(saved_19_class_model))
    data_args = DataArguments(
        labels="a,b,c,d,e,f", demo_train_samples=8, demo_validation_samples=2, demo_size=64, crop_size=[48, 48],
        num_visualizations=0, check_data=False,
    )  # fmt: skip
    training_args = FaPNTrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1,
        eval_strategy="no", save_strategy="no", dataloader_num_workers=0, dataloader_pin_memory=False, report_to=[],
    )  # fmt: skip
    run = run_training(model_args, data_args, training_args)
    logged = [entry for entry in run.trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3
    assert all(math.isfinite(entry["loss"]) and math.isfinite(entry["grad_norm"]) for entry in logged)
    assert logged[0]["loss"] < 20


class PoisonWeightsAfterFirstStep(TrainerCallback):
    """Makes the loss of the second step nan, as a diverging run would."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            with torch.no_grad():
                model.decode_head.predictor.conv.weight.fill_(float("nan"))


def test_a_run_whose_loss_becomes_non_finite_stops_and_writes_no_model_card(tmp_path):
    model_args = ModelArguments(preset="fapn-r18", neck_channels=32, head_channels=64, deformable_groups=4)
    data_args = DataArguments(
        demo_train_samples=8, demo_validation_samples=2, demo_size=64, crop_size=[48, 48], num_visualizations=0,
        check_data=False,
    )  # fmt: skip
    training_args = FaPNTrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, logging_steps=1, eval_strategy="no",
        save_strategy="no", dataloader_num_workers=0, dataloader_pin_memory=False, report_to=[],
    )  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 2 "):
        run_training(model_args, data_args, training_args, callbacks=[PoisonWeightsAfterFirstStep()])
    assert not (tmp_path / "README.md").exists()
    assert not (tmp_path / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, dropped",
    [
        ({}, "fapn.backbone._backbone.layer4."),
        ({"backbone": None, "backbone_config": tiny_resnet_backbone_config()}, "stages.3."),
    ],
    ids=["timm", "transformers"],
)
def test_backbone_weights_missing_from_a_checkpoint_are_initialised_like_a_fresh_backbone(tmp_path, overrides, dropped):
    torch.manual_seed(0)
    model = FaPNForSemanticSegmentation(tiny_config(**overrides))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(1.0)  # nothing in the file equals an initial value
    full = {k: v.contiguous() for k, v in model.state_dict().items()}
    kept = {k: v for k, v in full.items() if dropped not in k}
    assert len(kept) < len(full)
    save_file(kept, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(tmp_path)
    torch.manual_seed(1)
    reloaded = FaPNForSemanticSegmentation.from_pretrained(tmp_path)
    assert assert_equal_to_file(reloaded, kept) == len(kept)
    fresh = FaPNForSemanticSegmentation(tiny_config(**overrides)).state_dict()
    for name, tensor in reloaded.state_dict().items():
        if name in kept:
            continue
        assert torch.isfinite(tensor.float()).all(), name
        reference = fresh[name].double()
        if tensor.dim() > 1:  # conv weights: the backbone's own scheme (kaiming-normal fan_out for both ResNets)
            std = math.sqrt(2.0 / fans(tensor)[1])
            assert abs(tensor.double().std().item() / std - 1) < 5 / math.sqrt(2 * tensor.numel()) + 0.02, name
        elif "running" in name or "num_batches" in name or name.endswith(".bias"):
            assert torch.equal(tensor.double(), reference), name
        else:  # BN weights: ones, or zeros for timm's zero-initialised last BN of a block
            assert set(tensor.unique().tolist()) <= {0.0, 1.0} and torch.equal(tensor.double(), reference), name
