"""MaskFormer + FaPN (issue 11): parameter counts against SPEC 2.7 and an independent count, shapes, padding, the
shared GroupNorm through save/load, the Auto classes, remote code without the package, the pipeline's semantic
output, presets and the loss; fed as FaPN is fed (issue 19): mixed-size batches, semantic labels, target and
processor checks, post-processing that crops the padding, and the config's checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForInstanceSegmentation,
    AutoModelForSemanticSegmentation,
    AutoModelForUniversalSegmentation,
    MaskFormerDetrConfig,
    pipeline,
)
from transformers.models.maskformer.image_processing_maskformer import MaskFormerImageProcessor

import fapn_hf  # noqa: F401  (registers the Auto classes)
from fapn_hf import (
    COCO_STUFF_LABELS,
    MASKFORMER_PRESETS,
    MaskFormerFaPNConfig,
    MaskFormerFaPNForInstanceSegmentation,
    MaskFormerFaPNImageProcessor,
    MaskFormerFaPNModel,
    label_maps,
    preset_config,
    preset_image_processor,
    timm_backbone_config,
)
from fapn_hf.families.maskformer_fapn.targets import MaskClassificationCollator, semantic_to_mask_targets
from fapn_hf.modeling.configuration_maskformer_fapn import MASKFORMER_FAPN_CODE
from fapn_hf.modeling.modeling_maskformer_fapn import MaskFormerFaPNForSegmentationOutput

LABELS = ["sky", "road", "car", "person", "tree"]


def tiny_maskformer_config(**overrides) -> MaskFormerFaPNConfig:
    """timm resnet18, a 64-wide decoder with 4 deformable groups, 2 transformer layers, 10 queries."""
    id2label, label2id = label_maps(LABELS)
    settings = dict(
        backbone_config=timm_backbone_config("resnet18"),
        decoder_config=MaskFormerDetrConfig(
            decoder_layers=2, d_model=64, decoder_ffn_dim=64, decoder_attention_heads=2, num_queries=10
        ),
        fpn_feature_size=64,
        mask_feature_size=64,
        deformable_groups=4,
        id2label=id2label,
        label2id=label2id,
    )
    settings.update(overrides)
    return MaskFormerFaPNConfig(**settings)


def randomise_offsets(model: torch.nn.Module, std: float = 0.05) -> None:
    """Non-zero offset/mask convs, so that the deformable sampling is exercised (a fresh FAM samples the grid)."""
    for module in model.modules():
        if hasattr(module, "offset_mask_conv"):
            torch.nn.init.normal_(module.offset_mask_conv.weight, std=std)
            torch.nn.init.normal_(module.offset_mask_conv.bias, std=std)


def count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------- parameter counts

# SPEC 2.7's table (BatchNorm weights counted as parameters; detectron2's Swin-L with its four output LayerNorms).
SPEC_COUNTS = {
    "swin-l-ade20k": {"fapn": 9_903_240, "fpn": 6_246_144, "backbone": 195_201_204, "whole": 215_232_723},
    "r101-cocostuff": {"fapn": 11_197_576, "fpn": 7_540_480, "whole": 63_962_484},
}
CHANNELS = {"swin-l-ade20k": (192, 384, 768, 1536), "r101-cocostuff": (256, 512, 1024, 2048)}


def formula_fapn_decoder(channels, width=256, mask_dim=256, groups=8) -> int:
    """The FaPN pixel decoder counted from its description (GN = 2 * width; the shared GN counted once)."""
    gn = 2 * width
    total = 9 * channels[-1] * width + gn  # top: conv3x3 (no bias) + GN
    for c in channels[:-1]:
        total += c * width + gn  # lateral conv1x1 + GN
        total += 2 * width * width  # FAM offset conv1x1 (its GN is the output conv's)
        total += 9 * width * width + width  # DCN weight + bias
        total += 9 * width * 27 * groups + 27 * groups  # conv_offset_mask: 3 * G * 9 channels, bias
        total += 9 * width * width + gn  # output conv3x3 + GN
    return total + 9 * width * mask_dim + mask_dim  # mask_features conv3x3 with bias


def formula_fpn_decoder(channels, width=256, mask_dim=256) -> int:
    """MaskFormer's plain FPN decoder: top conv3x3 + GN, per level lateral 1x1 + GN and output 3x3 + GN, mask conv."""
    gn = 2 * width
    total = 9 * channels[-1] * width + gn
    for c in channels[:-1]:
        total += c * width + gn + 9 * width * width + gn
    return total + 9 * width * mask_dim + mask_dim


@pytest.mark.parametrize("short", ["swin-l-ade20k", "r101-cocostuff"])
def test_parameter_counts_match_spec_and_an_independent_count(short):
    expected = SPEC_COUNTS[short]
    assert formula_fapn_decoder(CHANNELS[short]) == expected["fapn"]
    assert formula_fpn_decoder(CHANNELS[short]) == expected["fpn"]
    for decoder in ("fapn", "fpn"):
        with torch.device("meta"):
            model = MaskFormerFaPNForInstanceSegmentation(preset_config(f"maskformer-{decoder}-{short}"))
        pixel_level = model.model.pixel_level_module
        assert count(pixel_level.decoder) == expected[decoder], decoder
        if "backbone" in expected:
            assert count(pixel_level.encoder) + count(pixel_level.encoder_output_norms) == expected["backbone"]
        if decoder == "fapn":
            assert count(model) == expected["whole"]
        else:
            assert count(model) == expected["whole"] - expected["fapn"] + expected["fpn"]


def test_presets_build_with_their_label_sets_and_processors():
    assert {
        "maskformer-fapn-swin-l-ade20k",
        "maskformer-fapn-r101-cocostuff",
        "maskformer-fpn-swin-l-ade20k",
        "maskformer-fpn-r101-cocostuff",
    } <= set(MASKFORMER_PRESETS)
    ade = preset_config("maskformer-fapn-swin-l-ade20k")
    assert ade.num_labels == 150 and ade.backbone_output_norms and ade.pixel_decoder == "fapn"
    assert ade.backbone_config.backbone == "swin_large_patch4_window12_384"
    coco = preset_config("maskformer-fapn-r101-cocostuff")
    assert coco.num_labels == 171 and coco.id2label[0] == "person" and coco.id2label[170] == "wood"
    assert len(COCO_STUFF_LABELS) == len(set(COCO_STUFF_LABELS)) == 171
    assert preset_config("maskformer-fpn-r101-cocostuff").pixel_decoder == "fpn"
    assert preset_config("maskformer-fapn-r101-cocostuff", ["a", "b"]).num_labels == 2
    processor = preset_image_processor(preset="maskformer-fapn-swin-l-ade20k")
    assert isinstance(processor, MaskFormerFaPNImageProcessor)
    assert processor.size.shortest_edge == 640 and processor.size.longest_edge == 2560 and processor.do_reduce_labels
    assert list(processor.image_mean) == [0.485, 0.456, 0.406] and list(processor.image_std) == [0.229, 0.224, 0.225]
    assert processor.size_divisor == 0  # the model pads to 32, as the original; the resize is not rounded
    with pytest.raises(ValueError, match="pixel_decoder must be one of"):
        tiny_maskformer_config(pixel_decoder="upernet")
    with pytest.raises(ValueError, match="Unknown preset"):
        preset_config("maskformer-fapn-r42")


# ---------------------------------------------------------------------------------------------------- the model


def test_shapes_padding_and_pixel_mask():
    model = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config()).eval()
    x = torch.randn(2, 3, 70, 90)  # padded to 96 x 96 inside
    with torch.no_grad():
        out = model(x)
        padded = model(torch.nn.functional.pad(x, (0, 6, 0, 26)))
    assert out.class_queries_logits.shape == (2, 10, len(LABELS) + 1)
    assert out.masks_queries_logits.shape == (2, 10, 24, 24)
    assert out.pixel_mask.shape == (2, 70, 90) and bool(out.pixel_mask.all())
    # Padding inside the model is zero padding after normalisation: the same as padding the input by hand.
    torch.testing.assert_close(out.masks_queries_logits, padded.masks_queries_logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pixel_mask must have shape"):
        model(x, pixel_mask=torch.ones(2, 70, 91, dtype=torch.long))


def test_fpn_switch_gives_maskformers_pixel_decoder():
    from transformers.models.maskformer.modeling_maskformer import MaskFormerPixelDecoder

    model = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config(pixel_decoder="fpn")).eval()
    assert type(model.model.pixel_level_module.decoder) is MaskFormerPixelDecoder
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).masks_queries_logits.shape == (1, 10, 16, 16)


def test_transformers_maskformer_swin_backbone():
    """transformers' MaskFormerSwin (its own per-stage norms; NCHW maps) works as the backbone at any input size."""
    from transformers import MaskFormerSwinConfig

    swin = MaskFormerSwinConfig(
        embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=12,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    model = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config(backbone_config=swin)).eval()
    assert model.model.pixel_level_module.encoder_output_norms is None
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 61, 97), output_hidden_states=True)
    assert outputs.masks_queries_logits.shape == (1, 10, 16, 32)
    assert [tuple(f.shape[1:]) for f in outputs.encoder_hidden_states] == [
        (32, 16, 32), (64, 8, 16), (128, 4, 8), (256, 2, 4)
    ]  # fmt: skip


def test_loss_trains_every_parameter_and_pads_the_targets():
    torch.manual_seed(0)
    model = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config()).train()
    randomise_offsets(model)
    x = torch.randn(2, 3, 70, 90)
    masks = [torch.randint(0, 2, (3, 70, 90)).float(), torch.randint(0, 2, (1, 70, 90)).float()]
    classes = [torch.tensor([0, 2, 4]), torch.tensor([1])]
    loss = model(x, mask_labels=masks, class_labels=classes).loss
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad
    with pytest.raises(ValueError, match="mask_labels and class_labels"):
        model(x, mask_labels=masks)


def test_shared_norm_is_one_module_saved_once_and_tied_after_loading(tmp_path):
    model = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config()).eval()
    randomise_offsets(model)
    decoder = model.model.pixel_level_module.decoder
    for alignment, output_conv in zip(decoder.alignments, decoder.output_convs):
        assert alignment.offset_conv.norm is output_conv.norm
        torch.nn.init.normal_(output_conv.norm.weight)  # not the initial 1s: a tie lost on reload would show
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not [k for k in saved if ".offset_conv.norm." in k]
    assert len([k for k in saved if ".output_convs." in k and ".norm." in k]) == 2 * len(decoder.output_convs)
    reloaded = AutoModelForInstanceSegmentation.from_pretrained(tmp_path).eval()
    reloaded_decoder = reloaded.model.pixel_level_module.decoder
    for level, (alignment, output_conv) in enumerate(zip(reloaded_decoder.alignments, reloaded_decoder.output_convs)):
        assert alignment.offset_conv.norm is output_conv.norm
        torch.testing.assert_close(output_conv.norm.weight, decoder.output_convs[level].norm.weight)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).masks_queries_logits, model(x).masks_queries_logits)


@pytest.fixture
def saved_maskformer(tmp_path):
    torch.manual_seed(0)
    model = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config()).eval()
    randomise_offsets(model)
    model.save_pretrained(tmp_path)
    MaskFormerFaPNImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(tmp_path)
    return model, tmp_path


def test_folder_and_auto_classes(saved_maskformer):
    model, folder = saved_maskformer
    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "configuration_maskformer_fapn.py",
        "modeling_maskformer_fapn.py",
        "image_processing_maskformer_fapn.py",
        "deform_conv.py",
        "remote_code.py",
        "label_checks.py",
    } <= names  # noqa: E501 fmt: skip
    # The shared kernel ships, FaPN's semantic family does not (tests/test_remote_code_closure.py has the whole set).
    assert not names & {"configuration_fapn.py", "modeling_fapn.py", "image_processing_fapn.py"}
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "maskformer_fapn"
    assert config["auto_map"] == MASKFORMER_FAPN_CODE.auto_map()
    assert config["auto_map"]["AutoModelForSemanticSegmentation"].endswith("MaskFormerFaPNForInstanceSegmentation")
    assert isinstance(AutoConfig.from_pretrained(folder), MaskFormerFaPNConfig)
    assert isinstance(AutoImageProcessor.from_pretrained(folder), MaskFormerFaPNImageProcessor)
    assert type(AutoModel.from_pretrained(folder)) is MaskFormerFaPNModel
    for auto_class in (AutoModelForInstanceSegmentation, AutoModelForUniversalSegmentation):
        assert type(auto_class.from_pretrained(folder)) is MaskFormerFaPNForInstanceSegmentation
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).class_queries_logits, model(x).class_queries_logits)


def _run_offline(script: str, cwd: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_remote_code_loads_without_fapn_hf(saved_maskformer, tmp_path_factory):
    model, folder = saved_maskformer
    work = tmp_path_factory.mktemp("remote")
    image = np.random.default_rng(0).integers(0, 255, (45, 61, 3), dtype=np.uint8)
    np.save(work / "image.npy", image)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["fapn_hf"] = None  # `import fapn_hf` now raises: only the folder's code can be used
        import numpy as np, torch
        from safetensors.torch import save_file
        from transformers import AutoImageProcessor, AutoModel, AutoModelForInstanceSegmentation
        folder = {str(folder)!r}
        model = AutoModelForInstanceSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        base = AutoModel.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__name__ == "MaskFormerFaPNImageProcessor", type(processor)
        assert type(base).__name__ == "MaskFormerFaPNModel"
        inputs = processor(np.load({str(work / "image.npy")!r}), return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        semantic = processor.post_process_semantic_segmentation(outputs, target_sizes=[(45, 61)])[0]
        save_file({{"masks": outputs.masks_queries_logits, "semantic": semantic}}, {str(work / "out.safetensors")!r})
        """
    )
    _run_offline(script, work)
    processor = MaskFormerFaPNImageProcessor.from_pretrained(folder)
    inputs = processor(image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    remote = load_file(str(work / "out.safetensors"))
    torch.testing.assert_close(remote["masks"], outputs.masks_queries_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(
        remote["semantic"], processor.post_process_semantic_segmentation(outputs, target_sizes=[(45, 61)])[0]
    )


def test_pipeline_gives_semantic_output_by_default(saved_maskformer):
    model, folder = saved_maskformer
    segmenter = pipeline("image-segmentation", model=str(folder))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (45, 61, 3), dtype=np.uint8))
    results = segmenter(image)
    assert results and all(r["score"] is None for r in results)  # semantic segments carry no score
    assert {r["label"] for r in results} <= set(LABELS)
    masks = np.stack([np.array(r["mask"]) > 0 for r in results])
    assert masks.shape[1:] == (45, 61)
    assert np.array_equal(masks.sum(axis=0), np.ones((45, 61)))  # a partition of the image
    # The same map as the processor's semantic post-processing.
    processor = segmenter.image_processor
    with torch.no_grad():
        outputs = model(**processor(image, return_tensors="pt"))
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(45, 61)])[0].numpy()
    label_ids = {name: index for index, name in enumerate(LABELS)}
    for result, mask in zip(results, masks):
        assert np.array_equal(mask, expected == label_ids[result["label"]])
    # MaskFormer's panoptic/instance post-processing stays available on request.
    with pytest.raises(AttributeError, match="semantic_only"):
        processor.post_process_panoptic_segmentation  # noqa: B018
    processor.semantic_only = False
    assert callable(processor.post_process_panoptic_segmentation)
    processor.semantic_only = True


def test_processor_takes_grayscale_and_rgba_images():
    processor = MaskFormerFaPNImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    expected = processor(rgb.convert("L").convert("RGB"), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(processor(rgb.convert("L"), return_tensors="pt")["pixel_values"], expected)
    rgba = processor(rgb.convert("RGBA"), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(rgba, processor(rgb, return_tensors="pt")["pixel_values"])
    assert expected.shape == (1, 3, 32, 40)


def test_semantic_post_processing_follows_the_original_order():
    """Upsample the mask logits to the padded input, crop the image, combine, resize: checked against a direct
    computation on a batch padded by the processor (the second image is smaller)."""
    torch.manual_seed(0)
    model = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config()).eval()
    processor = MaskFormerFaPNImageProcessor(do_resize=False)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (50, 70, 3), dtype=np.uint8), rng.integers(0, 255, (37, 45, 3), dtype=np.uint8)]
    inputs = processor(images, return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (50, 70)
    with torch.no_grad():
        outputs = model(**inputs)
    results = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(25, 35), (74, 90)], return_segmentation_scores=True
    )
    for index, (height, width), target in ((0, (50, 70), (25, 35)), (1, (37, 45), (74, 90))):
        masks = torch.nn.functional.interpolate(
            outputs.masks_queries_logits[index : index + 1], size=(64, 96), mode="bilinear", align_corners=False
        )[0, :, :height, :width]
        classes = outputs.class_queries_logits[index].softmax(-1)[:, :-1]
        scores = (classes[:, :, None, None] * masks.sigmoid()[:, None]).sum(0)
        scores = torch.nn.functional.interpolate(scores[None], size=target, mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(results[index]["segmentation_scores"], scores, atol=1e-6, rtol=1e-5)
        assert torch.equal(results[index]["segmentation"], scores.argmax(0))


def test_deep_supervision_with_and_without_hidden_states():
    """use_auxiliary_loss (the original's DEEP_SUPERVISION) works whether or not hidden states are asked for."""
    model = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config(use_auxiliary_loss=True)).eval()
    x = torch.randn(1, 3, 64, 64)
    masks, classes = [torch.randint(0, 2, (2, 64, 64)).float()], [torch.tensor([0, 3])]
    with torch.no_grad():
        plain = model(x, mask_labels=masks, class_labels=classes, output_auxiliary_logits=True)
        hidden = model(x, output_hidden_states=True)
    assert plain.transformer_decoder_hidden_states is None and plain.encoder_hidden_states is None
    # As the original: one auxiliary prediction per decoder layer but the last (not one from the query input).
    assert len(plain.auxiliary_logits) == model.config.decoder_config.decoder_layers - 1 and torch.isfinite(plain.loss)
    assert len(hidden.transformer_decoder_hidden_states) == model.config.decoder_config.decoder_layers + 1
    torch.testing.assert_close(plain.masks_queries_logits, hidden.masks_queries_logits)


def test_deep_supervision_predicts_from_the_normalised_output_of_each_earlier_layer():
    """The original's auxiliary predictions: class and mask heads on `decoder_norm(output of layer l)`, l < L."""
    config = tiny_maskformer_config(use_auxiliary_loss=True)
    config.decoder_config.decoder_layers = 3
    model = MaskFormerFaPNForInstanceSegmentation(config).eval()
    final_norm = model.model.transformer_module.decoder.layernorm
    torch.nn.init.normal_(final_norm.weight, 1.0, 0.3)  # a trained norm is not the identity
    torch.nn.init.normal_(final_norm.bias, 0.0, 0.3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        output = model(x, output_hidden_states=True, output_auxiliary_logits=True)
        model.config.use_auxiliary_loss = False
        without = model(x)
    layer_outputs = output.transformer_decoder_hidden_states[1:]  # after the query input
    assert len(output.auxiliary_logits) == 2
    for layer, auxiliary in enumerate(output.auxiliary_logits):
        state = torch.nn.functional.layer_norm(
            layer_outputs[layer],
            (state_size := layer_outputs[layer].shape[-1],),
            final_norm.weight,
            final_norm.bias,
            final_norm.eps,
        )
        assert state_size == config.decoder_config.d_model
        expected_classes = state @ model.class_predictor.weight.T + model.class_predictor.bias
        torch.testing.assert_close(auxiliary["class_queries_logits"], expected_classes, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            embeddings = model.mask_embedder(state)
        expected_masks = torch.einsum("bqc,bchw->bqhw", embeddings, output.pixel_decoder_last_hidden_state)
        torch.testing.assert_close(auxiliary["masks_queries_logits"], expected_masks, atol=1e-4, rtol=1e-4)
    # Deep supervision changes the loss only: the final predictions are the same with it off.
    torch.testing.assert_close(output.class_queries_logits, without.class_queries_logits)
    torch.testing.assert_close(output.masks_queries_logits, without.masks_queries_logits)


class OriginalTransformerPredictor(torch.nn.Module):
    """The parameters of the original MaskFormer's `TransformerPredictor` (with a one-layer DETR decoder), built from
    PyTorch modules and initialised as the original is: DETR's `Transformer._reset_parameters` (Xavier-uniform on
    every weight matrix of the decoder, the stacked `(3D, D)` query/key/value matrix included), `c2_xavier_fill` on the
    input projection, and PyTorch's defaults for the query embedding and the class and mask-embedding heads."""

    def __init__(self, in_channels: int, width: int, heads: int, ffn: int, queries: int, classes: int, mask_dim: int):
        super().__init__()
        nn = torch.nn
        self.self_attn = nn.MultiheadAttention(width, heads)
        self.cross_attn = nn.MultiheadAttention(width, heads)
        self.linear1, self.linear2 = nn.Linear(width, ffn), nn.Linear(ffn, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(4))  # three in the layer, the decoder's last
        for parameter in self.parameters():  # DETR's Transformer._reset_parameters
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        self.query_embed = nn.Embedding(queries, width)
        self.input_proj = nn.Conv2d(in_channels, width, 1)
        nn.init.kaiming_uniform_(self.input_proj.weight, a=1)  # c2_xavier_fill
        nn.init.constant_(self.input_proj.bias, 0)
        self.class_embed = nn.Linear(width, classes + 1)
        self.mask_embed = nn.ModuleList([nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, mask_dim)])

    def counterparts(self) -> dict[str, torch.Tensor]:
        """Our parameter names (under `model.transformer_module` or the heads) -> the original's tensors."""
        width = self.linear1.in_features
        names = {
            "queries_embedder.weight": self.query_embed.weight,
            "input_projection.weight": self.input_proj.weight,
            "input_projection.bias": self.input_proj.bias,
            "decoder.layers.0.mlp.fc1.weight": self.linear1.weight,
            "decoder.layers.0.mlp.fc1.bias": self.linear1.bias,
            "decoder.layers.0.mlp.fc2.weight": self.linear2.weight,
            "decoder.layers.0.mlp.fc2.bias": self.linear2.bias,
        }
        for ours, attention in (("self_attn", self.self_attn), ("encoder_attn", self.cross_attn)):
            for index, projection in enumerate("qkv"):
                rows = slice(index * width, (index + 1) * width)
                names[f"decoder.layers.0.{ours}.{projection}_proj.weight"] = attention.in_proj_weight[rows]
                names[f"decoder.layers.0.{ours}.{projection}_proj.bias"] = attention.in_proj_bias[rows]
            names[f"decoder.layers.0.{ours}.o_proj.weight"] = attention.out_proj.weight
            names[f"decoder.layers.0.{ours}.o_proj.bias"] = attention.out_proj.bias
        layer_norms = ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm")
        for norm, ours in zip(self.norms, [f"decoder.layers.0.{name}" for name in layer_norms] + ["decoder.layernorm"]):
            names[f"{ours}.weight"], names[f"{ours}.bias"] = norm.weight, norm.bias
        names = {f"model.transformer_module.{key}": value for key, value in names.items()}
        names["class_predictor.weight"], names["class_predictor.bias"] = self.class_embed.weight, self.class_embed.bias
        for index, linear in enumerate(self.mask_embed):
            names[f"mask_embedder.{index}.0.weight"], names[f"mask_embedder.{index}.0.bias"] = (
                linear.weight,
                linear.bias,
            )
        return names


def assert_initialised_as(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    """Same distribution, judged by standard deviation and largest magnitude (a uniform's is its bound), within
    sampling error; constants (zeros, ones) exactly."""
    for name, expected in reference.items():
        actual, expected = ours[name].detach().float(), expected.detach().float()
        assert actual.shape == expected.shape, name
        if expected.std() == 0:
            torch.testing.assert_close(actual, expected, msg=name)
            continue
        tolerance = 0.1 if expected.numel() >= 1000 else 0.3
        for statistic in (torch.std, lambda t: t.abs().max()):
            ratio = (statistic(actual) / statistic(expected)).item()
            assert abs(ratio - 1) < tolerance, f"{name}: {ratio:.3f} x the original's"


def test_transformer_decoder_queries_and_heads_start_as_the_originals(tmp_path):
    """The transformer decoder, its input projection, the object queries and the class and mask heads start with the
    original's distributions, compared with the original's modules built and initialised independently here; also
    when `from_pretrained` creates them; weights a checkpoint holds are loaded untouched.

    transformers' MaskFormer draws all of these N(0, 0.02) (queries included): cross-attention then barely changes
    the queries' states and a small model trained from scratch keeps every query predicting the same class and mask.
    """
    torch.manual_seed(0)
    decoder_config = MaskFormerDetrConfig(
        decoder_layers=1, d_model=256, decoder_ffn_dim=2048, decoder_attention_heads=8, num_queries=100
    )
    model = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config(decoder_config=decoder_config))
    original = OriginalTransformerPredictor(512, 256, 8, 2048, 100, len(LABELS), 64).counterparts()
    ours = dict(model.named_parameters())
    assert set(original) == {name for name in ours if not name.startswith("model.pixel_level_module")}
    assert_initialised_as(ours, original)
    # The point of it: at initialisation the queries' final states already differ (by about 5% of how much they
    # differ between images here; transformers' initialisation gives 0.3%).
    with torch.no_grad():
        states = model.model(torch.randn(4, 3, 96, 96)).transformer_decoder_last_hidden_state
    assert states.std(dim=1).mean() > 0.02 * states.std(dim=0).mean()

    model.save_pretrained(tmp_path / "full")
    reloaded = MaskFormerFaPNForInstanceSegmentation.from_pretrained(tmp_path / "full")
    for name, parameter in reloaded.named_parameters():
        torch.testing.assert_close(parameter, ours[name], msg=name)
    weights = tmp_path / "full" / "model.safetensors"
    kept = {key: value for key, value in load_file(str(weights)).items() if key not in original}
    save_file(kept, str(weights), metadata={"format": "pt"})
    recreated = dict(MaskFormerFaPNForInstanceSegmentation.from_pretrained(tmp_path / "full").named_parameters())
    assert_initialised_as(recreated, original)
    queries = "model.transformer_module.queries_embedder.weight"
    assert not torch.equal(recreated[queries], ours[queries])
    for name in kept:
        if name in recreated:
            torch.testing.assert_close(recreated[name], ours[name], msg=name)


def test_transformer_decoder_checkpoint_layout_is_transformers_maskformers(tmp_path):
    """The decoder (our subclass, for the original's initialisation) saves under the keys transformers' own MaskFormer
    saves its decoder under, and a folder in that layout (every folder saved before the subclass) loads every
    decoder weight."""
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation

    decoder_config = MaskFormerDetrConfig(decoder_layers=2, d_model=64, decoder_ffn_dim=64, decoder_attention_heads=2)
    reference = MaskFormerForInstanceSegmentation(MaskFormerConfig(
        backbone_config=timm_backbone_config("resnet18"), decoder_config=decoder_config, fpn_feature_size=64,
        mask_feature_size=64, num_labels=len(LABELS),
    ))  # fmt: skip
    reference.save_pretrained(tmp_path / "transformers")
    model = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config(decoder_config=decoder_config))
    model.save_pretrained(tmp_path / "ours")

    def decoder_keys(folder):
        keys = load_file(str(folder / "model.safetensors"))
        return {key.split("transformer_module.decoder.")[1] for key in keys if "transformer_module.decoder." in key}

    layout = decoder_keys(tmp_path / "transformers")
    assert decoder_keys(tmp_path / "ours") == layout and "layers.0.fc1.weight" in layout
    reloaded = MaskFormerFaPNForInstanceSegmentation.from_pretrained(tmp_path / "ours")
    for name, parameter in model.model.transformer_module.decoder.named_parameters():
        torch.testing.assert_close(reloaded.model.transformer_module.decoder.get_parameter(name), parameter, msg=name)


def test_fpn_pixel_decoder_starts_as_the_originals():
    """MaskFormer's FPN pixel decoder (the ablation's) with the original's c2_xavier_fill convs: U(+-sqrt(3 / fan_in))
    and zero biases (transformers' is Xavier-uniform)."""
    torch.manual_seed(0)
    decoder = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config(pixel_decoder="fpn")).model
    convs = [m for m in decoder.pixel_level_module.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8  # stem, 3 laterals, 3 outputs, the mask projection
    for conv in convs:
        bound = (3 / (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])) ** 0.5
        assert 0.9 * bound < conv.weight.abs().max() <= bound
        assert abs(conv.weight.std().item() / (bound / 3**0.5) - 1) < 0.1
        assert conv.bias is None or not conv.bias.any()


# --------------------------------------------------------------------------------- issue 19: fed as FaPN is fed


@pytest.fixture(scope="module")
def small_model() -> MaskFormerFaPNForInstanceSegmentation:
    torch.manual_seed(0)
    model = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config()).train()
    randomise_offsets(model)
    return model


def seeded_loss(model, **inputs) -> torch.Tensor:
    """The loss of one training forward; the same seed each time (dropout in the transformer decoder)."""
    torch.manual_seed(0)
    return model(**inputs).loss


def test_a_batch_of_two_sizes_pads_the_masks_with_no_mask_as_the_collator_does(small_model):
    """transformers' MaskFormer processor pads the binary masks with `ignore_index` (255): the loss of a batch of two
    sizes was -7e9 where each image alone gives about 4. The padding belongs to no mask (0), as in
    `MaskClassificationCollator`, which builds the same batch from padded semantic maps: the oracle here."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)]
    maps = [rng.integers(0, 5, (48, 64)).astype(np.uint8), rng.integers(0, 5, (64, 48)).astype(np.uint8)]
    maps[1][:10] = 255  # ignored pixels
    processor = preset_image_processor(preset="maskformer-fapn-r101-cocostuff", do_resize=False)
    batch = processor(images, segmentation_maps=maps, return_tensors="pt")
    assert all(set(masks.unique().tolist()) <= {0.0, 1.0} for masks in batch["mask_labels"])
    alone = [processor(image, return_tensors="pt")["pixel_values"][0] for image in images]
    collated = MaskClassificationCollator(num_labels=len(LABELS))(
        [{"pixel_values": p, "labels": torch.from_numpy(m.astype(np.int64))} for p, m in zip(alone, maps)]
    )
    assert torch.equal(batch["pixel_values"], collated["pixel_values"])
    assert torch.equal(batch["pixel_mask"], collated["pixel_mask"])
    for ours, theirs, ours_classes, theirs_classes in zip(
        batch["mask_labels"], collated["mask_labels"], batch["class_labels"], collated["class_labels"]
    ):
        assert torch.equal(ours, theirs) and torch.equal(ours_classes, theirs_classes)
    loss = seeded_loss(small_model, **batch)
    assert torch.isfinite(loss) and 0 < loss < 50
    torch.testing.assert_close(loss, seeded_loss(small_model, **collated))


def test_semantic_labels_train_as_the_mask_targets_made_from_them(small_model):
    """`labels=` (FaPN's and transformers' semantic keyword) was silently ignored (loss None)."""
    labels = torch.randint(0, len(LABELS), (2, 40, 56))
    labels[0, :8] = 255
    pixel_values = torch.randn(2, 3, 40, 56)
    masks, classes = semantic_to_mask_targets(labels, len(LABELS), 255)
    expected = seeded_loss(small_model, pixel_values=pixel_values, mask_labels=masks, class_labels=classes)
    torch.testing.assert_close(seeded_loss(small_model, pixel_values=pixel_values, labels=labels), expected)
    with pytest.raises(ValueError, match=r"labels must be a torch.Tensor of class ids .*, got ndarray"):  # as FaPN
        small_model(pixel_values, labels=labels.numpy())
    with pytest.raises(ValueError, match="pass either labels .* or mask_labels and class_labels"):
        small_model(pixel_values, labels=labels, mask_labels=masks, class_labels=classes)
    with pytest.raises(ValueError, match=r"labels must have shape \(batch, height, width\) = \(2, 40, 56\)"):
        small_model(pixel_values, labels=labels[:, :20])
    outside = labels.clone()
    outside[1, 0, 0] = len(LABELS)
    with pytest.raises(ValueError, match=r"labels contain values \[5\].*do_reduce_labels=True"):
        small_model(pixel_values, labels=outside)


def _one_target(**changes):
    """One image of 32 x 48 with one full-image mask of class 1; `changes` replace the mask or the class."""
    target = {"mask": torch.ones(1, 32, 48), "classes": torch.tensor([1])} | changes
    return {
        "pixel_values": torch.randn(1, 3, 32, 48),
        "mask_labels": [target["mask"]],
        "class_labels": [target["classes"]],
    }


ACCEPTED_TARGETS = {
    "int8 classes": {"classes": torch.tensor([1], dtype=torch.int8)},
    "int16 classes": {"classes": torch.tensor([1], dtype=torch.int16)},
    "int32 classes": {"classes": torch.tensor([1], dtype=torch.int32)},
    "uint8 classes": {"classes": torch.tensor([1], dtype=torch.uint8)},
    "NumPy classes": {"classes": np.array([1])},
    "list classes": {"classes": [1]},
    "bool masks": {"mask": torch.ones(1, 32, 48, dtype=torch.bool)},
    "uint8 masks": {"mask": torch.ones(1, 32, 48, dtype=torch.uint8)},
    "NumPy masks": {"mask": np.ones((1, 32, 48), np.float32)},
    "float64 masks": {"mask": torch.ones(1, 32, 48, dtype=torch.float64)},
}


@pytest.mark.parametrize("case", list(ACCEPTED_TARGETS))
def test_targets_of_other_types_give_the_loss_of_float_masks_and_int64_classes(small_model, case):
    """Each was a traceback from inside transformers or torch (index dtypes, bool interpolation, NumPy .device)."""
    torch.manual_seed(1)
    inputs = _one_target(**ACCEPTED_TARGETS[case])
    reference = {**inputs, "mask_labels": [torch.ones(1, 32, 48)], "class_labels": [torch.tensor([1])]}
    torch.testing.assert_close(seeded_loss(small_model, **inputs), seeded_loss(small_model, **reference))


REFUSED_TARGETS = {
    "the no-object id": (
        {"classes": torch.tensor([len(LABELS)])},
        r"class_labels\[0\] contain values \[5\] \(1 targets\) outside the label map: expected class ids in \[0, 5\); "
        r"5 is the id of the \"no object\" class, never a target\. If the data set marks background with 0",
    ),
    "a class id beyond": ({"classes": torch.tensor([9])}, r"class_labels\[0\] contain values \[9\].*\[0, 5\)$"),
    "a negative class id": ({"classes": torch.tensor([-1])}, r"class_labels\[0\] contain values \[-1\]"),
    "float classes": ({"classes": torch.tensor([1.0])}, r"class_labels\[0\] must hold integer class ids, got dtype"),
    "bool classes": ({"classes": torch.tensor([True])}, r"class_labels\[0\] must hold integer class ids"),
    "2-D classes": ({"classes": torch.tensor([[1]])}, r"class_labels\[0\] must be 1-D \(num_targets,\) class ids"),
    "a mask without its mask axis": (
        {"mask": torch.ones(32, 48)},
        r"mask_labels\[0\] must be \(num_targets, height, width\), got one mask of shape \(32, 48\): add the mask axis",
    ),
    "masks of another size": (
        {"mask": torch.ones(1, 10, 10)},
        r"mask_labels\[0\] must be \(1, 32, 48\): one mask per class of class_labels\[0\], at the size of "
        r"pixel_values; got shape \(1, 10, 10\)",
    ),
    "more masks than classes": ({"mask": torch.ones(2, 32, 48)}, r"must be \(1, 32, 48\).*got shape \(2, 32, 48\)"),
    "mask values other than 0 and 1": (
        {"mask": torch.full((1, 32, 48), 255.0)},
        r"mask_labels\[0\] must hold 0 and 1 \(binary masks\), got also \[255\]",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_TARGETS))
def test_targets_the_loss_cannot_use_are_refused_naming_the_value_and_the_range(small_model, case):
    """Silently wrong before (no-object class accepted, masks of another size or with 255 gave a loss of -3.9e8), or
    a traceback from inside transformers."""
    changes, message = REFUSED_TARGETS[case]
    with pytest.raises(ValueError, match=message):
        small_model(**_one_target(**changes))


def test_target_lists_must_have_one_entry_per_image(small_model):
    inputs = _one_target()
    with pytest.raises(ValueError, match=r"mask_labels must have one entry per image \(1\), got 2"):
        small_model(**{**inputs, "mask_labels": inputs["mask_labels"] * 2})
    with pytest.raises(ValueError, match="mask_labels and class_labels must both be given"):
        small_model(inputs["pixel_values"], mask_labels=inputs["mask_labels"])
    with pytest.raises(ValueError, match=r"class_labels must be a list with one entry per image \(1\), got int"):
        small_model(**{**inputs, "class_labels": 1})


def test_the_processor_keeps_the_ignore_label_ignored_and_checks_class_ids():
    """transformers' processor turned 255 into 254 (a class) with do_reduce_labels, and made 255 a class when
    `ignore_index` was unset; maps of another size or rank went through (tests/test_image_processing.py)."""
    rng = np.random.default_rng(0)
    image, raw = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), rng.integers(0, 6, (24, 32)).astype(np.uint8)
    raw[:4] = 255
    reducing = MaskFormerFaPNImageProcessor(do_resize=False, do_reduce_labels=True)
    assert reducing.ignore_index == 255  # unset: the models' semantic_loss_ignore_index
    batch = reducing(image, segmentation_maps=raw, return_tensors="pt")
    # A pixel-by-pixel reduction: 0 and 255 -> ignored (no mask), k -> k - 1.
    reduced = np.where((raw == 0) | (raw == 255), 255, raw.astype(np.int64) - 1)
    present = sorted(set(np.unique(reduced).tolist()) - {255})
    assert batch["class_labels"][0].tolist() == present
    for mask, class_id in zip(batch["mask_labels"][0], present):
        np.testing.assert_array_equal(mask.numpy(), (reduced == class_id).astype(np.float32))
    plain = MaskFormerFaPNImageProcessor(do_resize=False)(image, segmentation_maps=raw, return_tensors="pt")
    assert 255 not in plain["class_labels"][0].tolist()
    checking = MaskFormerFaPNImageProcessor(do_resize=False, num_labels=5)
    with pytest.raises(ValueError, match=r"segmentation map 0 contain values \[5\].*\[0, 5\) or the ignore index 255\. "
                       r"If the data set marks background with 0"):  # fmt: skip
        checking(image, segmentation_maps=raw)
    negative = raw.astype(np.int16)
    negative[5, 5] = -1
    with pytest.raises(ValueError, match=r"segmentation map 0 contain values \[-1\]"):
        MaskFormerFaPNImageProcessor(do_resize=False)(image, segmentation_maps=negative)
    with pytest.raises(ValueError, match="do_reduce_labels=True turns class 0 into ignore_index, which is None"):
        MaskFormerFaPNImageProcessor(do_resize=False, do_reduce_labels=True, ignore_index=None)(
            image, segmentation_maps=raw
        )


def _boundary_outputs() -> tuple[MaskFormerFaPNForSegmentationOutput, torch.Tensor]:
    """A batch padded to 64 x 64 whose first image is 48 x 64: query 0 (class 1) covers rows < 20 of it, query 1
    (class 2) the rows below; the other queries predict "no object". Mask logits at stride 4 of the padded input."""
    rows = torch.arange(16).float()[:, None].expand(16, 16) * 4 + 1.5  # centres of the stride-4 cells
    first = (19.5 - rows) * 2.0  # 0 half-way between rows 19 and 20 of the upsampled masks
    masks = torch.stack([first, -first, *([torch.full((16, 16), -20.0)] * 4)])
    classes = torch.full((6, len(LABELS) + 1), -20.0)
    classes[:, -1] = 20.0
    classes[0, :] = -20.0
    classes[0, 1] = 20.0
    classes[1, :] = -20.0
    classes[1, 2] = 20.0
    pixel_mask = torch.zeros(2, 64, 64, dtype=torch.long)
    pixel_mask[0, :48] = 1
    pixel_mask[1] = 1
    outputs = MaskFormerFaPNForSegmentationOutput(
        class_queries_logits=classes[None].repeat(2, 1, 1),
        masks_queries_logits=masks[None].repeat(2, 1, 1, 1),
        pixel_mask=pixel_mask,
    )
    return outputs, pixel_mask


def _first_row_of(segmentation: torch.Tensor, value: Any) -> int:
    return int((segmentation[:, 0] == value).nonzero()[0])


@pytest.mark.parametrize("method", ["semantic", "instance", "panoptic"])
def test_every_post_processing_crops_the_padding_before_resizing(method):
    """The boundary at row 20 of the 48-row image lands at row 40 of a 96-row target (transformers' instance and
    panoptic post-processing resize the padded 64 rows: row 30), and without target sizes every result has the
    image's own size."""
    processor = MaskFormerFaPNImageProcessor(semantic_only=False)
    outputs, _ = _boundary_outputs()
    run = getattr(processor, f"post_process_{method}_segmentation")
    settings = {"label_ids_to_fuse": set()} if method == "panoptic" else {}
    sized = run(outputs, target_sizes=[(96, 128), (64, 64)], **settings)
    natural = run(outputs, **settings)
    if method == "semantic":
        assert _first_row_of(sized[0], 2) == 40 and _first_row_of(natural[0], 2) == 20
        assert [tuple(m.shape) for m in natural] == [(48, 64), (64, 64)]
        return
    for results, row, size in ((sized, 40, (96, 128)), (natural, 20, (48, 64))):
        segmentation, segments = results[0]["segmentation"], results[0]["segments_info"]
        assert tuple(segmentation.shape) == size
        lower = next(s["id"] for s in segments if s["label_id"] == 2)
        assert _first_row_of(segmentation, lower) == row
    assert tuple(natural[1]["segmentation"].shape) == (64, 64)
    transformers_result = getattr(MaskFormerImageProcessor, f"post_process_{method}_segmentation")(
        processor, outputs, target_sizes=[(96, 128), (64, 64)], **settings
    )[0]
    lower = next(s["id"] for s in transformers_result["segments_info"] if s["label_id"] == 2)
    assert _first_row_of(transformers_result["segmentation"], lower) == 30  # what was wrong


def test_instance_and_panoptic_post_processing_check_their_arguments():
    processor = MaskFormerFaPNImageProcessor(semantic_only=False)
    outputs, _ = _boundary_outputs()
    with pytest.raises(ValueError, match=r"target_sizes takes one \(height, width\) per image, got \(40, 30\)"):
        processor.post_process_instance_segmentation(outputs, target_sizes=(40, 30))
    with pytest.raises(ValueError, match=r"target_sizes\[0\] is \(0, 4\)"):
        processor.post_process_panoptic_segmentation(outputs, target_sizes=[(0, 4), (4, 4)])
    with pytest.raises(ValueError, match="got a tuple, which the model returns with return_dict=False"):
        processor.post_process_instance_segmentation(outputs.to_tuple())


def test_the_config_checks_what_fapns_config_checks(monkeypatch):
    """`MaskFormerFaPNConfig(backbone="resnet18")` asked the Hub whether a repo of that name exists (it failed
    offline); id gaps, repeated names, a label2id that is not the inverse and negative loss weights were accepted."""

    def no_network(*args, **kwargs):
        raise AssertionError("the config asked the Hub")

    monkeypatch.setattr("transformers.backbone_utils.hf_api", no_network)
    config = MaskFormerFaPNConfig(backbone="resnet18")
    assert config.backbone_config.model_type == "timm_backbone" and config.backbone_config.backbone == "resnet18"
    assert list(config.backbone_config.out_indices) == list(timm_backbone_config("resnet18").out_indices)
    with pytest.raises(ValueError, match="pass either `backbone` .* or `backbone_config`, not both"):
        MaskFormerFaPNConfig(backbone="resnet18", backbone_config=timm_backbone_config("resnet18"))
    with pytest.raises(ValueError, match=r"backbone_kwargs cannot set \['out_indices'\]: the model takes the"):
        MaskFormerFaPNConfig(backbone="resnet18", backbone_kwargs={"out_indices": [4]})
    frozen = MaskFormerFaPNConfig(backbone="resnet18", backbone_kwargs={"freeze_batch_norm_2d": True})
    assert frozen.backbone_config.freeze_batch_norm_2d
    refused = {
        "without gaps, got ids \\[0, 2\\] \\(missing \\[1\\]\\)": {"id2label": {0: "a", 2: "b"}},
        "class names in id2label must be unique; repeated: \\['a'\\]": {"id2label": {0: "a", 1: "a"}},
        "is not the inverse of id2label": {"id2label": {0: "a", 1: "b"}, "label2id": {"a": 1, "b": 0}},
        "num_labels=3 but id2label names 2 classes": {"id2label": {0: "a", 1: "b"}, "num_labels": 3},
        "mask_weight must be a finite number >= 0, got -1.0": {"mask_weight": -1.0},
        "no_object_weight must be a finite number >= 0, got nan": {"no_object_weight": float("nan")},
        "dice_weight must be a finite number >= 0": {"dice_weight": -0.5},
        "cross_entropy_weight must be a finite number >= 0": {"cross_entropy_weight": float("-inf")},
        # Types, as FaPNConfig's: transformers' strict fields raised huggingface_hub's error, which is no ValueError.
        "fpn_feature_size must be int, got '256' \\(str\\)": {"fpn_feature_size": "256"},
        "use_auxiliary_loss must be bool, got 'false' \\(str\\)": {"use_auxiliary_loss": "false"},
        "deformable_groups must be int, got '4' \\(str\\)": {"deformable_groups": "4"},
        "backbone_output_norms must be bool, got 1 \\(int\\)": {"backbone_output_norms": 1},
    }
    for message, settings in refused.items():
        with pytest.raises(ValueError, match=f"^MaskFormerFaPNConfig: .*{message}"):
            MaskFormerFaPNConfig(**settings)
    with pytest.warns(UserWarning, match=r"unknown setting 'mask_weigth' .*; did you mean 'mask_weight'\?"):
        MaskFormerFaPNConfig(mask_weigth=2.0)
    with pytest.raises(ValueError, match=r"^TimmBackboneConfig: freeze_batch_norm_2d must be bool, got 'false'"):
        timm_backbone_config("resnet18", freeze_batch_norm_2d="false")
    # Re-heading a saved config with num_labels alone still works (the saved names give way).
    reheaded = MaskFormerFaPNConfig.from_dict(tiny_maskformer_config().to_dict(), num_labels=7)
    assert reheaded.num_labels == 7 and reheaded.id2label[6] == "LABEL_6"


def test_a_saved_config_reloads_without_a_warning_about_its_keys(tmp_path):
    """The near-miss warning (`config_checks.warn_about_misspelt_keys`) reads the keys a config does not declare; the
    ones MaskFormer saves beside its fields (num_attention_heads, num_hidden_layers, ...) are no near misses."""
    for config in (tiny_maskformer_config(), preset_config("maskformer-fapn-swin-l-ade20k")):
        config.save_pretrained(tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert MaskFormerFaPNConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
