"""The converter's MaskFormer + FaPN family (issue 11): exactness against an independent re-implementation of the
original pixel decoder with transformers' MaskFormer for the rest (`original_maskformer_fapn.py`), for the ResNet-101
COCO-Stuff model at full size through `convert_checkpoint` (folder, card, record) and for the Swin-L ADE20K layout at
reduced depth and width (the same key layout: every stage, block, norm and the 12-window relative position tables),
plus the refusals.

End to end: an RGB uint8 image of 100 x 148 (padded to 128 x 160 inside both) through the converted folder's processor
and model and its semantic post-processing, against the original preprocessing, network and `semantic_inference` +
`sem_seg_postprocess`: class logits, mask logits and the semantic scores agree within 1e-5 (float32), the logits within
1e-10 in float64. The processors
are given the image's own shorter side, so the resize is the identity in both (see test_convert_original.py: a real
resize would compare resizers). Maximum differences are printed at the end of the module (`pytest -s`).
"""

from __future__ import annotations

import json

import numpy as np
import original_maskformer_fapn as original
import pytest
import timm
import torch
from transformers import (
    AutoImageProcessor,
    AutoModelForUniversalSegmentation,
    MaskFormerConfig,
    MaskFormerDetrConfig,
    MaskFormerSwinConfig,
    ResNetConfig,
)

import fapn_hf  # noqa: F401
from fapn_hf import MaskFormerFaPNForInstanceSegmentation, timm_backbone_config
from fapn_hf.convert import Checkpoint, CheckpointError, convert_state_dict
from fapn_hf.families import original_models
from fapn_hf.families.maskformer_fapn.convert import CONVERTER as MASKFORMER_FAPN
from fapn_hf.families.maskformer_fapn.presets import maskformer_preset_config
from fapn_hf.hub.conversion import convert_checkpoint

ORIGINAL_MODELS = original_models()
HEIGHT, WIDTH = 100, 148
TOLERANCE = 1e-5
MEASURED: dict[str, dict[str, float]] = {}


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 5, 7)))
    smooth = torch.nn.functional.interpolate(coarse, size=(HEIGHT, WIDTH), mode="bicubic", align_corners=False)
    image = smooth[0].permute(1, 2, 0).numpy() + rng.normal(0, 25, (HEIGHT, WIDTH, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _compare(name, model, processor, reference, output_size=(HEIGHT, WIDTH), image=None) -> None:
    image = _image() if image is None else image
    processor.size = {"shortest_edge": min(image.shape[:2]), "longest_edge": 2560}  # identity resize
    with torch.no_grad():
        class_expected, masks_expected, scores_expected = original.original_inference(reference, image, output_size)
        inputs = processor(image, return_tensors="pt")
        assert tuple(inputs["pixel_values"].shape[-2:]) == image.shape[:2]
        outputs = model(**inputs)
        result = processor.post_process_semantic_segmentation(
            outputs, target_sizes=[output_size], return_segmentation_scores=True
        )[0]
    pairs = {
        "class_queries_logits": (outputs.class_queries_logits, class_expected),
        "masks_queries_logits": (outputs.masks_queries_logits, masks_expected),
        "semantic_scores": (result["segmentation_scores"], scores_expected),
    }
    MEASURED[name] = {key: (a - b).abs().max().item() for key, (a, b) in pairs.items()}
    for key, (actual, expected) in pairs.items():
        torch.testing.assert_close(actual, expected, atol=TOLERANCE, rtol=TOLERANCE, msg=lambda m, k=key: f"{k}: {m}")
    assert torch.equal(result["segmentation"], scores_expected.argmax(0))


def _compare_float64(name, model, reference) -> None:
    """The same networks in float64 on the same padded input: equal to rounding (the conversion itself is exact)."""
    images = original.normalise_and_pad(_image()).double()
    try:
        model.double(), reference.double()
        with torch.no_grad():
            class_expected, masks_expected = reference(images)
            outputs = model(images)
        MEASURED[name]["float64_masks"] = (outputs.masks_queries_logits - masks_expected).abs().max().item()
        torch.testing.assert_close(outputs.class_queries_logits, class_expected, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(outputs.masks_queries_logits, masks_expected, atol=1e-10, rtol=1e-10)
    finally:
        model.float(), reference.float()


# ------------------------------------------------------------------------------------------ ResNet-101, full size


def _r101_reference() -> original.OriginalMaskFormerFaPN:
    config = MaskFormerConfig(
        backbone_config=ResNetConfig(
            layer_type="bottleneck",
            embedding_size=64,
            hidden_sizes=[256, 512, 1024, 2048],
            depths=[3, 4, 23, 3],
            downsample_in_bottleneck=False,  # STRIDE_IN_1X1: False, the torchvision layout
            out_features=["stage1", "stage2", "stage3", "stage4"],
        ),
        decoder_config=MaskFormerDetrConfig(),  # 6 layers, d = 256, 8 heads, FFN 2048, 100 queries
        num_labels=171,
    )
    torch.manual_seed(0)
    network = original.OriginalMaskFormerFaPN(config).eval()
    network.randomise(seed=1)
    return network


@pytest.fixture(scope="module")
def r101(tmp_path_factory):
    reference = _r101_reference()
    state = original.original_state_dict(reference)
    folder = tmp_path_factory.mktemp("maskformer-r101")
    checkpoint = folder / "model_final.pth"
    torch.save({"model": state, "iteration": 59999}, checkpoint)
    output = folder / "converted"
    result = convert_checkpoint(checkpoint, "maskformer-fapn-r101-cocostuff", output)
    return reference, state, result, output


@pytest.mark.slow
def test_r101_original_layout_is_the_real_one(r101):
    _, state, result, _ = r101
    keys = set(state)
    # detectron2 ResNet-101 (FrozenBN: no num_batches_tracked), BasePixelFANDecoder, MaskFormer's predictor.
    assert "backbone.stem.conv1.weight" in keys and "backbone.res4.22.conv3.norm.running_var" in keys
    assert "backbone.res2.0.shortcut.norm.weight" in keys and not [k for k in keys if "num_batches" in k]
    decoder = "sem_seg_head.pixel_decoder"
    for k in (1, 2, 3):
        names = ("align_{}.offset.norm.weight", "layer_{}.norm.weight", "align_{}.dcpack_L2.conv_offset_mask.weight")
        assert {f"{decoder}.{name.format(k)}" for name in (*names, "adapter_{}.norm.bias")} <= keys
    assert (
        "sem_seg_head.pixel_decoder.layer_4.norm.weight" in keys
        and "sem_seg_head.pixel_decoder.adapter_4.weight" not in keys
    )
    assert "sem_seg_head.predictor.transformer.decoder.layers.5.multihead_attn.in_proj_weight" in keys
    assert state["sem_seg_head.predictor.transformer.decoder.layers.0.self_attn.in_proj_weight"].shape == (768, 256)
    assert result.num_tensors > len(state)  # the split projections, the BN counters
    # Offsets of a few pixels: the deformable sampling is really exercised.
    assert state["sem_seg_head.pixel_decoder.align_1.dcpack_L2.conv_offset_mask.bias"].abs().mean() > 0.5


@pytest.mark.slow
def test_r101_converts_exactly_end_to_end(r101):
    reference, _, _, output = r101
    model = AutoModelForUniversalSegmentation.from_pretrained(output).eval()
    assert type(model) is MaskFormerFaPNForInstanceSegmentation and model.config.num_labels == 171
    assert model.config.id2label[0] == "person" and model.config.backbone_config.backbone == "resnet101"
    processor = AutoImageProcessor.from_pretrained(output)
    assert processor.size.shortest_edge == 640 and processor.size.longest_edge == 2560
    torch.testing.assert_close(
        torch.tensor(processor.image_mean) * 255, torch.tensor(original.PIXEL_MEAN_RGB), rtol=0, atol=1e-4
    )
    _compare("r101", model, processor, reference)
    _compare_float64("r101", model, reference)


@pytest.mark.slow
def test_r101_folder_record_and_card(r101):
    _, _, result, output = r101
    names = {p.name for p in output.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "conversion.json", "README.md",
            "modeling_maskformer_fapn.py"} <= names  # fmt: skip
    record = json.loads((output / "conversion.json").read_text())
    assert record["model"] == "maskformer-fapn-r101-cocostuff" and record["converter"]["family"].startswith(
        "MaskFormer"
    )
    assert record["reported"][0]["value"] == 39.6
    card = (output / "README.md").read_text()
    assert "MaskFormer with the FaPN pixel decoder" in card and "39.6" in card


# ------------------------------------------------------------------------------------- Swin-L layout, reduced

# Swin-L's layout (patch 4, window 12, 4 stages, per-stage output norms) at embed 32 and depth 2 per stage.
_SWIN = {"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8)}
_TIMM_NAME = "fapn_test_swin_window12"


def _register_reduced_timm_swin() -> None:
    if timm.is_model(_TIMM_NAME):
        return
    from timm.models import register_model
    from timm.models.swin_transformer import _create_swin_transformer

    def fapn_test_swin_window12(pretrained: bool = False, **kwargs):
        return _create_swin_transformer(
            "swin_large_patch4_window12_384", pretrained=False, patch_size=4, window_size=12, **_SWIN, **kwargs
        )

    fapn_test_swin_window12.__module__ = "timm.models.swin_transformer"
    register_model(fapn_test_swin_window12)


_SMALL_DECODER = dict(decoder_layers=2, d_model=64, decoder_ffn_dim=128, decoder_attention_heads=4, num_queries=12)


@pytest.fixture(scope="module")
def swin():
    _register_reduced_timm_swin()
    config = MaskFormerConfig(
        backbone_config=MaskFormerSwinConfig(
            embed_dim=_SWIN["embed_dim"],
            depths=list(_SWIN["depths"]),
            num_heads=list(_SWIN["num_heads"]),
            window_size=12,
            image_size=384,
            out_features=["stage1", "stage2", "stage3", "stage4"],
        ),
        decoder_config=MaskFormerDetrConfig(**_SMALL_DECODER),
        fpn_feature_size=64,
        mask_feature_size=64,
        num_labels=150,
    )
    torch.manual_seed(0)
    reference = original.OriginalMaskFormerFaPN(config).eval()
    reference.randomise(seed=2)
    state = original.original_state_dict(reference)
    model_spec = ORIGINAL_MODELS["maskformer-fapn-swin-l-ade20k"]
    package_config = maskformer_preset_config(
        model_spec.name,
        model_spec.labels,
        backbone_config=timm_backbone_config(_TIMM_NAME),
        decoder_config=MaskFormerDetrConfig(**_SMALL_DECODER),
        fpn_feature_size=64,
        mask_feature_size=64,
    )
    model = MaskFormerFaPNForInstanceSegmentation(package_config).eval()
    checkpoint = Checkpoint(path=__import__("pathlib").Path("swin.pth"), tensors=state, extras={}, sha256="0")
    converted, _ = convert_state_dict(MASKFORMER_FAPN, checkpoint, model)
    model.load_state_dict(converted, strict=True)
    processor = MASKFORMER_FAPN.build_processor(model_spec, checkpoint)
    return reference, state, model, processor, checkpoint


def test_swin_original_layout_is_the_real_one(swin):
    _, state, _, _, _ = swin
    keys = set(state)
    assert {"backbone.patch_embed.proj.weight", "backbone.patch_embed.norm.bias", "backbone.norm0.weight",
            "backbone.norm3.bias", "backbone.layers.2.downsample.reduction.weight",
            "backbone.layers.3.blocks.1.attn.relative_position_index",
            "backbone.layers.3.blocks.1.attn.qkv.weight"} <= keys  # fmt: skip
    assert "backbone.layers.3.downsample.reduction.weight" not in keys  # no merging after the last stage
    assert state["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape == (23 * 23, 1)


def test_swin_converts_exactly_end_to_end(swin):
    reference, _, model, processor, _ = swin
    assert processor.do_reduce_labels and model.config.num_labels == 150
    _compare("swin", model, processor, reference)
    _compare_float64("swin", model, reference)


def test_swin_any_input_size_and_odd_shapes(swin):
    """Window padding as the original at sizes where timm's own Swin would drop the shift (stage 4 <= window)."""
    reference, _, model, processor, _ = swin
    image = _image(seed=3)[:61, :97]
    _compare("swin-61x97", model, processor, reference, output_size=(61, 97), image=image)


def test_swin_model_saves_and_reloads_with_the_original_windows(swin, tmp_path):
    """from_pretrained builds on the meta device: the timm Swin comes back with its window semantics and indices."""
    _, _, model, _, _ = swin
    model.save_pretrained(tmp_path)
    reloaded = MaskFormerFaPNForInstanceSegmentation.from_pretrained(tmp_path).eval()
    block = reloaded.model.pixel_level_module.encoder._backbone.layers_3.blocks[1]
    assert type(block).__name__ == "OriginalWindowSwinBlock" and tuple(block.shift_size) == (6, 6)
    x = torch.randn(1, 3, 61, 97)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).masks_queries_logits, model(x).masks_queries_logits, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------------ refusals


def test_refusals_name_the_problem(swin, r101, tmp_path):
    _, state, model, _, _ = swin
    tampered = dict(state)
    tampered["sem_seg_head.pixel_decoder.align_2.offset.norm.weight"] = (
        tampered["sem_seg_head.pixel_decoder.align_2.offset.norm.weight"] + 1
    )
    with pytest.raises(CheckpointError, match="share one GroupNorm"):
        convert_state_dict(MASKFORMER_FAPN, Checkpoint(tmp_path / "x.pth", tampered, {}, "0"), model)
    wrong_window = dict(state)
    wrong_window["backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(144, 144, dtype=torch.long)
    with pytest.raises(CheckpointError, match="relative_position_index"):
        convert_state_dict(MASKFORMER_FAPN, Checkpoint(tmp_path / "x.pth", wrong_window, {}, "0"), model)
    missing = {k: v for k, v in state.items() if "mask_features" not in k}
    with pytest.raises(CheckpointError, match="model tensors not filled"):
        convert_state_dict(MASKFORMER_FAPN, Checkpoint(tmp_path / "x.pth", missing, {}, "0"), model)
    swin_file = tmp_path / "swin.pth"
    torch.save({"model": state}, swin_file)
    with pytest.raises(CheckpointError, match="Swin backbone.*use --model maskformer-fapn-swin-l-ade20k"):
        convert_checkpoint(swin_file, "maskformer-fapn-r101-cocostuff", tmp_path / "out")
    _, r101_state, _, _ = r101
    r101_file = tmp_path / "r101.pth"
    torch.save({"model": r101_state}, r101_file)
    with pytest.raises(CheckpointError, match="MaskFormer"):
        convert_checkpoint(r101_file, "fapn-r50-pointrend-cityscapes", tmp_path / "out2")


def test_report_measured_differences():
    """Prints the maximum absolute differences measured above (run with -s). The float32 comparisons themselves hold
    `TOLERANCE` absolute and relative (mask logits reach tens, where float32 rounding of the deformable sampling
    gives about 1e-5); the float64 ones must be at round-off."""
    for name, values in MEASURED.items():
        print(f"\nMaskFormer + FaPN conversion, {name}: " + ", ".join(f"{k} {v:.2e}" for k, v in values.items()))
    assert MEASURED and all(v < 1e-4 for values in MEASURED.values() for v in values.values())
    assert all(v < 1e-10 for values in MEASURED.values() for k, v in values.items() if k.startswith("float64"))
