"""The registry of model families: every family is found by its model type and its presets, takes the options
every family shares the same way, refuses the options of other families by name, and builds, saves and reloads
through its own Auto class. Each test runs for every registered family."""

from __future__ import annotations

import pytest
import torch
from families_small import SMALL, missing_families, output_signature
from transformers import AutoConfig

from fapn_hf import FAMILIES, family_of, preset_config, preset_image_processor
from fapn_hf.families import all_presets, family_of_preset, find_family
from fapn_hf.training.args import ModelArguments
from fapn_hf.training.builders import build_model

FAMILY_NAMES = sorted(FAMILIES)


def test_every_registered_family_has_a_small_build_here():
    assert missing_families() == [], "add the new family's small preset to tests/families_small.py"
    assert set(SMALL) == set(FAMILIES), "tests/families_small.py names a family that is not registered"


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_family_is_found_by_model_type_preset_model_and_config(name):
    family = FAMILIES[name]
    preset, _ = SMALL[name]
    assert family_of_preset(preset) is family and all(family_of_preset(p) is family for p in family.presets)
    assert family_of(family.model_type) is family
    config = preset_config(preset, ["a", "b", "c"], **SMALL[name][1])
    assert family_of(config) is family and isinstance(config, family.config_class)
    assert config.model_type == family.model_type
    assert find_family(torch.nn.Linear(1, 1)) is None
    # Preset names are unique over the families.
    assert len(all_presets()) == len(set(all_presets()))


def test_unknown_names_are_refused_with_the_closest_preset():
    with pytest.raises(ValueError, match=r"Unknown preset 'maskformer-fapn-r101-cocostuf' \(did you mean "):
        preset_config("maskformer-fapn-r101-cocostuf")
    with pytest.raises(ValueError, match=r"model type 'segformer' is not a fapn_hf model family"):
        family_of("segformer")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_the_shared_options_shape_every_family_the_same_way(name):
    """`backbone=` replaces the preset's backbone in every family (it once only renamed MaskFormer's), and the
    width option sets the neck's width."""
    preset, options = SMALL[name]
    family = FAMILIES[name]
    model = family.head_class(preset_config(preset, ["a", "b", "c"], **options))
    backbone = model.backbone_module()
    resnet18 = sum(p.numel() for n, p in backbone.named_parameters())
    assert 11.0e6 < resnet18 < 11.3e6, resnet18  # ResNet-18's trunk, not the preset's ResNet-50/101
    assert family.saved_options(model.config)["backbone"] == "resnet18"
    assert family.saved_options(model.config)["neck_channels"] == 64
    assert family.describe(model.config).endswith("3 classes") and "resnet18" in family.describe(model.config)


def test_maskformer_decoder_options_reach_the_decoder():
    config = preset_config("maskformer-fapn-r101-cocostuff", num_queries=10, decoder_layers=2, decoder_hidden_size=64)
    decoder = config.decoder_config
    assert (decoder.num_queries, decoder.decoder_layers, decoder.d_model, decoder.decoder_attention_heads) == (
        10,
        2,
        64,
        2,
    )
    with pytest.raises(ValueError, match="decoder_hidden_size must be a positive multiple of 32"):
        preset_config("maskformer-fapn-r101-cocostuff", decoder_hidden_size=48)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_family_refuses_the_options_of_the_others_by_name(name):
    family = FAMILIES[name]
    preset, options = SMALL[name]
    foreign = {
        key
        for other in FAMILIES.values()
        for key in (*other.options, *other.training_options)
        if key not in (*family.options, *family.training_options)
    }
    assert foreign, "the families take the same options: nothing to refuse"
    key = sorted(foreign)[0]
    value = 64 if key not in ("use_fam", "use_fsm", "use_point_rend") else True
    with pytest.raises(ValueError, match=rf"{key}={value!r} \(a {family.display_name.replace('+', '[+]')} model"):
        build_model(ModelArguments(preset=preset, **options, **{key: value}), ["a", "b"])


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_build_save_and_reload_through_the_family_auto_class(name, tmp_path):
    family = FAMILIES[name]
    preset, options = SMALL[name]
    torch.manual_seed(0)
    model = build_model(ModelArguments(preset=preset, **options), ["a", "b", "c"]).eval()
    assert type(model) is family.head_class
    model.save_pretrained(tmp_path)
    family.preset_image_processor(preset, ["a", "b", "c"]).save_pretrained(tmp_path)
    assert family_of(AutoConfig.from_pretrained(tmp_path)) is family
    reloaded = family.auto_class.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, actual = output_signature(name, model, x), output_signature(name, reloaded, x)
    if family.predicts_pixel_classes:
        assert expected.shape == (1, 3, 64, 96)
    # Two model objects holding equal weights (checked) differ by float32 rounding in the deformable sampling (2.3e-5
    # measured on FaPN's logits); a weight that did not load would differ by orders of magnitude more.
    assert all(torch.equal(value, reloaded.state_dict()[key]) for key, value in model.state_dict().items())
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_the_public_preset_functions_dispatch_to_the_family():
    assert preset_image_processor("ade20k").do_reduce_labels  # FaPN's processor for the ADE20K label set
    processor = preset_image_processor(preset="maskformer-fapn-swin-l-ade20k")
    assert family_of_preset("maskformer-fapn-swin-l-ade20k").display_name == "MaskFormer + FaPN"
    assert processor.size.shortest_edge == 640


@pytest.mark.parametrize(
    ("call", "message"),
    [
        # The first argument is the label set: a preset there used to give FaPN-R50's processor without a word.
        (lambda: preset_image_processor("maskformer-fapn-r101-cocostuff"), r"is a preset: call .*preset='maskformer"),
        (lambda: preset_image_processor("maskformer-fapn-r101-cocostufff"), r"close to the preset 'maskformer-fapn-r"),
        (lambda: preset_image_processor("cityscape"), r"Unknown label set 'cityscape'"),
        (lambda: preset_image_processor("cocostufff", preset="maskformer-fapn-r101-cocostuff"), r"label set 'coco"),
        (lambda: preset_config(["a", "b"]), r"preset is named by a string, got list"),
    ],
)
def test_the_public_preset_functions_refuse_a_misplaced_or_mistyped_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_pipelines_know_every_head_of_a_family_as_an_in_tree_model(name):
    """transformers' pipelines check a model's class name against their Auto classes' static tables (registered
    classes are not looked at): each head a family registers is in its table, so no pipeline logs that the model
    "is not supported"."""
    import transformers

    family = FAMILIES[name]
    model_type = family.config_class.model_type
    for auto_class_name, model_name in family.code.models.items():
        if auto_class_name == "AutoModel":
            continue
        names = getattr(transformers, auto_class_name)._model_mapping._model_mapping
        assert names.get(model_type) == model_name.split(".")[1], auto_class_name


def test_the_image_segmentation_pipeline_takes_a_fapn_folder_without_an_error_log(tmp_path, caplog):
    from transformers import pipeline
    from transformers.utils import logging as transformers_logging

    config = preset_config("fapn-r50", ["a", "b"], **SMALL["fapn"][1])
    FAMILIES["fapn"].head_class(config).save_pretrained(tmp_path)
    preset_image_processor(["a", "b"]).save_pretrained(tmp_path)
    transformers_logging.enable_propagation()
    try:
        with caplog.at_level("ERROR"):
            segmenter = pipeline("image-segmentation", model=str(tmp_path))
    finally:
        transformers_logging.disable_propagation()
    assert type(segmenter.model).__name__ == "FaPNForSemanticSegmentation"
    assert not [record for record in caplog.records if "not supported" in record.getMessage()]
