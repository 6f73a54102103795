"""FaPNConfig: the backbone shortcut, validation with clear errors, serialisation, presets."""

from __future__ import annotations

import pytest
from conftest import tiny_config
from transformers import AutoConfig, ResNetConfig, TimmBackboneConfig

from fapn_hf import PRESETS, FaPNConfig, label_maps, preset_config, preset_image_processor


def test_defaults_are_fapn_r50_of_the_paper():
    config = FaPNConfig()
    assert config.backbone_config.backbone == "resnet50" and config.backbone_config.out_indices == [1, 2, 3, 4]
    assert (config.use_fam, config.use_fsm, config.neck_channels, config.deformable_groups) == (True, True, 256, 8)
    assert (config.neck_norm, config.head_channels, config.semantic_loss_ignore_index) == ("", 128, 255)


@pytest.mark.parametrize(
    "name, out_indices",
    [("resnet18", [1, 2, 3, 4]), ("convnext_tiny", [0, 1, 2, 3]), ("resnet50.a1_in1k", [1, 2, 3, 4])],
)
def test_backbone_shortcut_picks_the_stride_4_to_32_maps(name, out_indices):
    config = FaPNConfig(backbone=name)
    assert isinstance(config.backbone_config, TimmBackboneConfig)
    assert config.backbone_config.backbone == name and config.backbone_config.out_indices == out_indices


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"backbone": "resnet5O"}, "Unknown backbone 'resnet5O'"),
        ({"backbone": "resnet18", "backbone_config": ResNetConfig(out_features=["stage1"])}, "not both"),
        ({"backbone_config": ResNetConfig(out_features=["stage2", "stage3", "stage4"])}, "must return 4 feature maps"),
        ({"neck_norm": "LN"}, "neck_norm must be one of"),
        ({"deformable_groups": 7}, r"neck_channels \(256\) must be divisible by deformable_groups \(7\)"),
        ({"neck_channels": 48, "neck_norm": "GN"}, "multiple of 32"),
        ({"neck_channels": 32, "neck_norm": "GN"}, "at least 64"),
        ({"head_channels": 32}, r"head_channels \(32\) must be a multiple of 32 and at least 64"),
        ({"head_channels": 100}, r"head_channels \(100\) must be a multiple of 32"),
        ({"num_labels": 1}, "at least 2 labels"),
        ({"num_labels": 19, "semantic_loss_ignore_index": 3}, "is a valid class id"),
        ({"deform_conv_implementation": "cuda"}, "deform_conv_implementation must be one of"),
        ({"use_point_rend": True, "point_rend_importance_sample_ratio": 1.5}, r"must lie in \[0, 1\]"),
        ({"use_point_rend": True, "point_rend_oversample_ratio": 0.5}, "oversample_ratio must be >= 1"),
        ({"size_divisibility": 0}, "size_divisibility must be >= 1"),
        (
            {
                "use_pretrained_backbone": True,
                "backbone_config": ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"]),
            },
            "needs a timm backbone",
        ),
    ],
)
def test_bad_settings_raise_a_clear_value_error(settings, message):
    with pytest.raises(ValueError, match=message):
        FaPNConfig(**settings)


def test_fsm_without_fam_is_allowed():
    assert FaPNConfig(use_fam=False, use_fsm=True).use_fsm


def test_json_round_trip(tmp_path):
    config = tiny_config(
        use_point_rend=True, neck_norm="GN", neck_channels=64, use_fsm=False, id2label={i: f"c{i}" for i in range(4)}
    )
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, FaPNConfig)
    assert {**reloaded.to_dict(), "_name_or_path": ""} == {**config.to_dict(), "_name_or_path": ""}
    assert reloaded.backbone_config.backbone == "resnet18" and reloaded.id2label[3] == "c3"


def test_every_preset_builds_a_valid_config():
    assert {"fapn-r18", "fapn-r34", "fapn-r50", "fapn-r101", "fapn-r50-pointrend", "fapn-r101-pointrend"} <= set(
        PRESETS
    )
    assert {name.replace("fapn", "fpn", 1) for name in PRESETS if name.startswith("fapn")} <= set(PRESETS)
    for name in PRESETS:
        config = preset_config(name, "ade20k")
        assert config.num_labels == 150
        assert config.use_fam == config.use_fsm == name.startswith("fapn")
        assert config.use_point_rend == name.endswith("pointrend")
    assert preset_config("fapn-r101-pointrend").backbone_config.backbone == "resnet101"
    assert preset_config("fapn-r18").id2label[18] == "bicycle"


def test_preset_errors_and_processors():
    with pytest.raises(ValueError, match="Unknown preset 'fapn-r42'"):
        preset_config("fapn-r42")
    with pytest.raises(ValueError, match="Unknown label set 'coco'"):
        preset_config("fapn-r50", "coco")
    with pytest.raises(ValueError, match="repeated"):
        label_maps(["a", "b", "a"])
    assert preset_image_processor("ade20k").do_reduce_labels
    assert preset_image_processor("cityscapes").size.shortest_edge == 1024
