"""The Hub format: safetensors round trips, Auto classes, remote code, the pipeline, pretrained backbones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import transformers
from conftest import tiny_config
from PIL import Image
from safetensors.torch import save_file
from test_maskformer_fapn import tiny_maskformer_config
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
    pipeline,
)
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

import fapn_hf
from fapn_hf import (
    FaPNConfig,
    FaPNForSemanticSegmentation,
    FaPNImageProcessor,
    FaPNModel,
    MaskFormerFaPNForInstanceSegmentation,
    label_maps,
)
from fapn_hf.modeling.configuration_fapn import FAPN_CODE
from fapn_hf.modeling.configuration_maskformer_fapn import MASKFORMER_FAPN_CODE

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run_offline(args: list[str], cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Runs a Python process with the Hub switched off (plus `env`) and asserts that it succeeds."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture
def saved_model(tmp_path):
    id2label, label2id = label_maps(["sky", "road", "car", "person"])
    config = tiny_config(id2label=id2label, label2id=label2id, use_point_rend=True)
    model = FaPNForSemanticSegmentation(config).eval()
    model.save_pretrained(tmp_path)
    FaPNImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(tmp_path)
    return model, tmp_path


def test_save_writes_safetensors_config_processor_and_code(saved_model):
    _, folder = saved_model
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    assert {"configuration_fapn.py", "modeling_fapn.py", "deform_conv.py", "image_processing_fapn.py",
            "backbone_utils.py", "label_checks.py", "remote_code.py"} <= names  # fmt: skip
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in names)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "fapn"
    assert (
        config["auto_map"]
        == FAPN_CODE.auto_map()
        == {
            "AutoConfig": "configuration_fapn.FaPNConfig",
            "AutoModel": "modeling_fapn.FaPNModel",
            "AutoModelForSemanticSegmentation": "modeling_fapn.FaPNForSemanticSegmentation",
            "AutoImageProcessor": "image_processing_fapn.FaPNImageProcessor",
        }
    )
    assert "backbone" not in config  # the shortcut is not stored; the backbone lives in backbone_config
    assert config["backbone_config"]["model_type"] == "timm_backbone"
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert "auto_map" not in processor and "image_processor_type" not in processor


@pytest.mark.parametrize("family", [FAPN_CODE, MASKFORMER_FAPN_CODE], ids=lambda family: family.config)
def test_each_family_is_registered_as_remote_code_declares_it(family):
    """`import fapn_hf` registers exactly what `remote_code` declares, and the modules that carry the save logic ship
    on their own (no relative imports: a saved folder needs nothing else)."""
    config_class = getattr(fapn_hf, family.config.split(".")[1])
    assert AutoConfig.for_model(config_class.model_type).__class__ is config_class
    for auto_class_name, model_name in family.models.items():
        registered = getattr(transformers, auto_class_name)._model_mapping[config_class]
        assert f"{registered.__module__.split('.')[-1]}.{registered.__name__}" == model_name
    marked = {getattr(fapn_hf, name.split(".")[1])._auto_class for name in family.models.values()}
    assert marked <= set(family.models) and config_class._auto_class == "AutoConfig"
    processor_class = IMAGE_PROCESSOR_MAPPING[config_class]["torchvision"]
    assert f"{processor_class.__module__.split('.')[-1]}.{processor_class.__name__}" == family.processor
    code = Path(fapn_hf.__file__).parent / "modeling"
    assert get_relative_import_files(code / "remote_code.py") == []
    assert get_relative_import_files(code / "label_checks.py") == []


def test_round_trip_through_auto_classes(saved_model):
    model, folder = saved_model
    assert isinstance(AutoConfig.from_pretrained(folder), FaPNConfig)
    assert isinstance(AutoImageProcessor.from_pretrained(folder), FaPNImageProcessor)
    assert type(AutoModel.from_pretrained(folder)) is FaPNModel
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    assert type(reloaded) is FaPNForSemanticSegmentation
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, model(x).logits, atol=1e-5, rtol=1e-5)


def test_remote_code_loads_without_fapn_hf(saved_model, tmp_path_factory):
    model, folder = saved_model
    work = tmp_path_factory.mktemp("remote")
    x = torch.randn(1, 3, 50, 70)
    save_file({"x": x}, str(work / "input.safetensors"))
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["fapn_hf"] = None  # `import fapn_hf` now raises: only the folder's code can be used
        import torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation
        folder = {str(folder)!r}
        model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        base = AutoModel.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__name__ == "FaPNImageProcessor" and type(base).__name__ == "FaPNModel"
        with torch.no_grad():
            logits = model(load_file({str(work / "input.safetensors")!r})["x"]).logits
        save_file({{"logits": logits}}, {str(work / "output.safetensors")!r})
        """
    )
    _run_offline(["-c", script], cwd=work)
    from safetensors.torch import load_file

    with torch.no_grad():
        expected = model(x).logits
    torch.testing.assert_close(load_file(str(work / "output.safetensors"))["logits"], expected, atol=1e-5, rtol=1e-5)


def test_pipeline_returns_named_masks(saved_model):
    _, folder = saved_model
    segmenter = pipeline("image-segmentation", model=str(folder))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 61, 3), dtype=np.uint8))
    results = segmenter(image)
    assert results, "the pipeline returned no segment"
    assert {r["label"] for r in results} <= {"sky", "road", "car", "person"}
    masks = [np.array(r["mask"]) > 0 for r in results]
    assert all(mask.shape == (45, 61) for mask in masks)
    # Semantic masks partition the image: every pixel belongs to exactly one label.
    assert np.array_equal(np.sum(masks, axis=0), np.ones((45, 61)))


def test_pipeline_never_asks_about_remote_code_and_remote_code_still_loads(tmp_path):
    """In fresh processes with `trust_remote_code` unset, whichever order a folder was written in."""
    folders = []
    for processor_first in (False, True):
        folder = tmp_path / ("processor-then-model" if processor_first else "model-then-processor")
        model = FaPNForSemanticSegmentation(tiny_config())
        processor = FaPNImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
        for component in (processor, model) if processor_first else (model, processor):
            component.save_pretrained(folder)
        saved = json.loads((folder / "preprocessor_config.json").read_text())
        assert "image_processor_type" not in saved and "auto_map" not in saved
        folders.append(str(folder))
    local = textwrap.dedent(
        f"""
        import builtins
        def refuse(*args):
            raise AssertionError("transformers asked about remote code")
        builtins.input = refuse
        import numpy as np
        from PIL import Image
        from transformers import AutoImageProcessor, pipeline
        import fapn_hf
        for folder in {folders!r}:
            segmenter = pipeline("image-segmentation", model=folder)
            assert type(segmenter.image_processor) is fapn_hf.FaPNImageProcessor, type(segmenter.image_processor)
            assert segmenter(Image.fromarray(np.zeros((20, 30, 3), np.uint8)))
            assert type(AutoImageProcessor.from_pretrained(folder)) is fapn_hf.FaPNImageProcessor
        print("OK")
        """
    )
    assert "OK" in _run_offline(["-c", local]).stdout
    remote = textwrap.dedent(
        f"""
        import sys
        sys.modules["fapn_hf"] = None
        from transformers import AutoImageProcessor
        for folder in {folders!r}:
            processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
            assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        print("OK")
        """
    )
    assert "OK" in _run_offline(["-c", remote], cwd=tmp_path).stdout


def test_image_feature_extraction_pipeline_returns_p2(saved_model):
    model, folder = saved_model
    extractor = pipeline("image-feature-extraction", model=str(folder))
    assert type(extractor.model) is FaPNModel
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (45, 61, 3), dtype=np.uint8))
    features = extractor(image, return_tensors=True)
    # The processor resizes the shorter side to 64 (64 x 87), the model pads to 64 x 96: P2 is 16 x 24.
    assert features.shape == (1, model.config.neck_channels, 16, 24)
    inputs = extractor.image_processor(image, return_tensors="pt")
    with torch.no_grad():
        expected = model.fapn(inputs["pixel_values"]).last_hidden_state
    torch.testing.assert_close(features, expected)


def test_grayscale_and_rgba_images_through_the_pipeline(saved_model):
    _, folder = saved_model
    segmenter = pipeline("image-segmentation", model=str(folder))
    rng = np.random.default_rng(1)
    for image in (
        Image.fromarray(rng.integers(0, 255, (30, 40), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 255, (30, 40, 4), dtype=np.uint8)),
    ):
        assert all(r["mask"].size == (40, 30) for r in segmenter(image))


def _perturbed_timm_resnet18() -> dict[str, torch.Tensor]:
    """resnet18 weights with non-trivial BatchNorm statistics, standing in for a pretrained checkpoint."""
    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False)
    for module in source.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            torch.nn.init.normal_(module.weight)
    return {k: v.contiguous() for k, v in source.state_dict().items()}


def _assert_backbone_holds(model: FaPNForSemanticSegmentation, weights: dict[str, torch.Tensor]) -> None:
    state = model.fapn.backbone._backbone.state_dict()
    compared = [k for k in state if k in weights]
    assert len(compared) >= 100  # convs, BN affine parameters and running statistics of every stage
    assert any("running_var" in k for k in compared)
    for key in compared:
        assert torch.equal(state[key], weights[key]), key


def test_pretrained_backbone_weights_survive_post_init(tmp_path):
    """`from_pretrained_backbone` goes through timm's real `pretrained=True` download path; the test points it at a
    Hugging Face cache it writes itself (offline), then checks every weight and BN statistic in the built model."""
    weights = _perturbed_timm_resnet18()
    cache = tmp_path / "hub"
    commit = "0" * 40
    snapshot = cache / "models--timm--resnet18.a1_in1k" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (cache / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (cache / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text(commit)
    save_file(weights, str(snapshot / "model.safetensors"))
    save_file(weights, str(tmp_path / "expected.safetensors"))
    script = textwrap.dedent(
        f"""
        import torch
        from safetensors.torch import load_file
        from fapn_hf import FaPNConfig, FaPNForSemanticSegmentation
        model = FaPNForSemanticSegmentation.from_pretrained_backbone(FaPNConfig(backbone="resnet18", num_labels=3))
        assert model.config.use_pretrained_backbone
        expected = load_file({str(tmp_path / "expected.safetensors")!r})
        state = model.fapn.backbone._backbone.state_dict()
        compared = [k for k in state if k in expected]
        assert len(compared) >= 100, compared
        bad = [k for k in compared if not torch.equal(state[k], expected[k])]
        assert not bad, bad
        print("OK", len(compared))
        """
    )
    assert "OK" in _run_offline(["-c", script], HF_HUB_CACHE=str(cache)).stdout


def _forbid_downloads(monkeypatch, allow_timm_pretrained: bool = False) -> list[str]:
    """Makes huggingface_hub's downloads (and, unless allowed, timm's `pretrained=True`) raise; returns the list of
    attempts."""
    import huggingface_hub
    import huggingface_hub.file_download

    attempts: list[str] = []
    create_model = timm.create_model

    def guarded_create_model(*args, **kwargs):
        if kwargs.get("pretrained") and not allow_timm_pretrained:
            attempts.append(f"timm.create_model({args[0]!r}, pretrained=True)")
            raise AssertionError("a constructor asked timm for pretrained weights")
        return create_model(*args, **kwargs)

    def no_download(*args, **kwargs):
        attempts.append("huggingface_hub download")
        raise AssertionError("a constructor touched the Hub")

    monkeypatch.setattr(timm, "create_model", guarded_create_model)
    for module in (huggingface_hub, huggingface_hub.file_download):
        monkeypatch.setattr(module, "hf_hub_download", no_download)
    return attempts


def test_constructors_never_load_pretrained_backbones(monkeypatch, caplog):
    """`use_pretrained_backbone=True` in a config makes no network or Hub access while building either family: the
    backbone stays randomly initialised and a warning names the explicit step."""
    attempts = _forbid_downloads(monkeypatch)
    reference = FaPNForSemanticSegmentation(tiny_config()).state_dict()
    with caplog.at_level("WARNING"):
        torch.manual_seed(0)
        semantic = FaPNForSemanticSegmentation(tiny_config(use_pretrained_backbone=True))
        maskformer = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config(use_pretrained_backbone=True))
    assert attempts == []
    assert caplog.text.count("from_pretrained_backbone(config)") == 2
    assert semantic.config.use_pretrained_backbone and maskformer.config.use_pretrained_backbone
    assert semantic.state_dict().keys() == reference.keys()


@pytest.mark.parametrize("family", ["fapn", "maskformer_fapn"])
def test_from_pretrained_backbone_loads_a_local_checkpoint_into_either_family(family, tmp_path, monkeypatch):
    weights = _perturbed_timm_resnet18()
    checkpoint = tmp_path / "resnet18.safetensors"
    save_file(weights, str(checkpoint))
    attempts = _forbid_downloads(monkeypatch, allow_timm_pretrained=True)  # a local file needs no download
    if family == "fapn":
        model = FaPNForSemanticSegmentation.from_pretrained_backbone(tiny_config(), checkpoint_file=str(checkpoint))
        backbone = model.fapn.backbone
    else:
        model = MaskFormerFaPNForInstanceSegmentation.from_pretrained_backbone(
            tiny_maskformer_config(), checkpoint_file=str(checkpoint)
        )
        backbone = model.model.pixel_level_module.encoder
    state = backbone._backbone.state_dict()
    compared = [k for k in state if k in weights]
    assert len(compared) >= 100 and any("running_var" in k for k in compared)
    assert all(torch.equal(state[k], weights[k]) for k in compared)
    assert model.config.use_pretrained_backbone and attempts == []
    with pytest.raises(FileNotFoundError, match="backbone checkpoint not found: .*missing.safetensors"):
        model.base_model.load_pretrained_backbone(str(tmp_path / "missing.safetensors"))


def test_pretrained_backbone_from_a_local_file_and_not_refetched_on_reload(tmp_path):
    weights = _perturbed_timm_resnet18()
    save_file(weights, str(tmp_path / "resnet18.safetensors"))
    config = tiny_config(use_pretrained_backbone=False)
    model = FaPNForSemanticSegmentation(config)
    with pytest.raises(FileNotFoundError, match="backbone checkpoint not found: .*missing.safetensors"):
        model.fapn.load_pretrained_backbone(str(tmp_path / "missing.safetensors"))
    model.fapn.load_pretrained_backbone(str(tmp_path / "resnet18.safetensors"))
    _assert_backbone_holds(model, weights)
    # A checkpoint saved with use_pretrained_backbone=True reloads from its own weights, with no download.
    model.config.use_pretrained_backbone = True
    model.save_pretrained(tmp_path / "saved")
    script = textwrap.dedent(
        f"""
        import fapn_hf
        from transformers import AutoModelForSemanticSegmentation
        from safetensors.torch import load_file
        import torch
        model = AutoModelForSemanticSegmentation.from_pretrained({str(tmp_path / "saved")!r})
        expected = load_file({str(tmp_path / "resnet18.safetensors")!r})
        state = model.fapn.backbone._backbone.state_dict()
        assert all(torch.equal(state[k], expected[k]) for k in state if k in expected)
        print("OK")
        """
    )
    empty_cache = tmp_path / "empty-cache"
    assert "OK" in _run_offline(["-c", script], HF_HUB_CACHE=str(empty_cache)).stdout


def test_create_model_command_writes_a_loadable_folder(tmp_path):
    output = tmp_path / "out"
    result = _run_offline(
        ["-m", "fapn_hf", "create-model", "--preset", "fapn-r18", "--labels", "background,road,car",
         "--output_dir", str(output)]
    )  # fmt: skip
    assert "reload check" in result.stdout
    config = AutoConfig.from_pretrained(output)
    assert config.id2label == {0: "background", 1: "road", 2: "car"}
    assert config.backbone_config.backbone == "resnet18" and config.use_fam and config.use_fsm
