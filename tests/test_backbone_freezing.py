"""Fine-tuning as detectron2 does: frozen backbone BatchNorm (FrozenBN) and frozen leading stages (FREEZE_AT), for
timm and transformers backbones, kept through `train()` and `from_pretrained`."""

from __future__ import annotations

import pytest
import torch
from conftest import set_backbone_gammas_to_one, tiny_config
from transformers import AutoModelForSemanticSegmentation, ResNetConfig

from fapn_hf import FaPNConfig, FaPNForSemanticSegmentation
from fapn_hf.modeling.backbone_utils import backbone_stem_and_stages, frozen_modules
from fapn_hf.training.args import ModelArguments
from fapn_hf.training.builders import build_model

SMALL_MSRA_RESNET = ResNetConfig(
    layer_type="bottleneck",
    embedding_size=16,
    hidden_sizes=[32, 64, 64, 64],
    depths=[1, 2, 1, 1],
    downsample_in_bottleneck=True,
    out_features=["stage1", "stage2", "stage3", "stage4"],
)
BACKBONES = {"timm": {"backbone": "resnet18"}, "transformers": {"backbone_config": SMALL_MSRA_RESNET}}


def _model(kind: str, **settings) -> FaPNForSemanticSegmentation:
    config = tiny_config(**{"backbone": None, **BACKBONES[kind], **settings})
    model = FaPNForSemanticSegmentation(config)
    set_backbone_gammas_to_one(model)
    for module in model.modules():  # non-trivial statistics, so that a frozen norm differs from a training one
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return model


def _batch_norms(model: FaPNForSemanticSegmentation) -> list[torch.nn.BatchNorm2d]:
    return [m for m in model.fapn.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def _train_step(model: FaPNForSemanticSegmentation) -> None:
    model.train()
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, model.config.num_labels, (2, 64, 64))
    model(pixel_values, labels=labels).loss.backward()


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_stem_and_stages_are_the_pyramid_stages(kind):
    backbone = _model(kind).fapn.backbone
    stem, stages = backbone_stem_and_stages(backbone)
    assert len(stages) == 4
    if kind == "timm":
        assert [type(m).__name__ for m in stem] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
        names = {id(module): name for name, module in backbone._backbone.named_children()}
        assert [[names[id(m)] for m in stage] for stage in stages] == [["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    else:
        assert [type(m).__name__ for m in stem] == ["ResNetEmbeddings"]
        assert [len(stage[0].layers) for stage in stages] == [1, 2, 1, 1]  # depths: the stages in order


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_frozen_norms_keep_their_statistics_and_get_no_gradient_in_training(kind):
    model = _model(kind, freeze_backbone_norm=True)
    norms = _batch_norms(model)
    before = [(n.running_mean.clone(), n.running_var.clone(), n.weight.clone()) for n in norms]
    _train_step(model)
    assert model.training and all(not n.training for n in norms)
    for norm, (mean, var, weight) in zip(norms, before):
        assert torch.equal(norm.running_mean, mean) and torch.equal(norm.running_var, var)
        assert not norm.weight.requires_grad and norm.weight.grad is None and norm.bias.grad is None
        assert torch.equal(norm.weight, weight)
    # Everything else trains: convolutions of the backbone and the whole neck and head get gradients.
    convs = [m for m in model.fapn.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0 for conv in convs)
    assert model.decode_head.predictor.conv.weight.grad is not None


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_without_freezing_the_norms_train(kind):
    model = _model(kind, freeze_backbone_norm=False)
    norms = _batch_norms(model)
    before = [n.running_mean.clone() for n in norms]
    _train_step(model)
    assert all(n.training for n in norms)
    assert all(not torch.equal(n.running_mean, mean) for n, mean in zip(norms, before))
    assert all(n.weight.grad is not None for n in norms)


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_frozen_stages_like_detectron2_freeze_at(kind):
    """FREEZE_AT=2: the stem and the stride-4 stage get no gradient and their norms stay frozen; res3..res5 train."""
    model = _model(kind, freeze_backbone_stages=2)
    stem, stages = backbone_stem_and_stages(model.fapn.backbone)
    frozen = frozen_modules(model.fapn.backbone, 2)
    assert frozen == stem + stages[0]
    frozen_before = {id(p): p.clone() for m in frozen for p in m.parameters()}
    frozen_norms = {id(n) for m in frozen for n in m.modules() if isinstance(n, torch.nn.BatchNorm2d)}
    running = {id(n): n.running_mean.clone() for n in _batch_norms(model)}
    _train_step(model)
    for module in frozen:
        for parameter in module.parameters():
            assert not parameter.requires_grad and parameter.grad is None
            assert torch.equal(parameter, frozen_before[id(parameter)])
    for norm in _batch_norms(model):
        unchanged = torch.equal(norm.running_mean, running[id(norm)])
        assert unchanged == (id(norm) in frozen_norms), "only the frozen stages' norms keep their statistics"
    trainable = [p for stage in stages[1:] for m in stage for p in m.parameters()]
    assert trainable and all(p.requires_grad and p.grad is not None for p in trainable)


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_freezing_travels_with_the_weights_through_from_pretrained(kind, tmp_path):
    _model(kind, freeze_backbone_norm=True, freeze_backbone_stages=3).save_pretrained(tmp_path)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    assert reloaded.config.freeze_backbone_norm and reloaded.config.freeze_backbone_stages == 3
    reloaded.train()
    assert all(not n.training and not n.weight.requires_grad for n in _batch_norms(reloaded))
    frozen = frozen_modules(reloaded.fapn.backbone, 3)
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    stages = backbone_stem_and_stages(reloaded.fapn.backbone)[1]
    assert all(p.requires_grad for m in stages[2] for p in m.parameters() if p.ndim > 1)


def test_training_arguments_set_the_config_fields(tmp_path):
    labels = ["a", "b", "c"]
    model = build_model(ModelArguments(preset="fapn-r18", freeze_backbone_norm=True, freeze_backbone_stages=2), labels)
    assert model.config.freeze_backbone_norm and model.config.freeze_backbone_stages == 2
    assert not model.config.backbone_config.freeze_batch_norm_2d  # one mechanism: the FaPN config fields
    model.save_pretrained(tmp_path)
    # Fine-tuning a saved model keeps its stages setting unless told otherwise; the norm argument always applies.
    reloaded = build_model(ModelArguments(model_name_or_path=str(tmp_path), freeze_backbone_norm=False), labels)
    assert not reloaded.config.freeze_backbone_norm and reloaded.config.freeze_backbone_stages == 2


def test_out_of_range_stages_are_refused():
    with pytest.raises(ValueError, match=r"freeze_backbone_stages must lie in \[0, 5\].*got 6"):
        FaPNConfig(backbone="resnet18", num_labels=3, freeze_backbone_stages=6)
