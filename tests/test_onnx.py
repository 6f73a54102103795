"""The ONNX Runtime inference path: `fapn_hf.export.onnx.export_onnx` (dynamic batch, height and width, verified by
onnxruntime), `OnnxRuntimeModel`, and `SegmentationPredictor`'s `backend="onnxruntime"` / `"auto"`.

One export of a tiny FaPN (non-zero offsets, so the deformable sampling is exercised) serves the module; exporting
takes 40-120 s on a busy 2-core machine. PointRend models export too (tests/test_modeling.py), but on zero-padded
inputs their equally uncertain border cells let onnxruntime's TopK refine other (equally valid) cells than PyTorch's,
so the padded sizes here use the plain semantic head."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import tiny_config

from fapn_hf import FaPNForSemanticSegmentation, FaPNImageProcessor, SegmentationPredictor
from fapn_hf.cli import commands as cli
from fapn_hf.export.onnx import ONNX_FILE_NAME, OnnxRuntimeModel, OnnxVerificationError, export_onnx, verify_onnx
from fapn_hf.inference.predictor import TTAConfig

onnxruntime = pytest.importorskip("onnxruntime", reason="the ONNX Runtime path needs the [onnx] or [test] extra")

# float32 through a different runtime: sums are reassociated, nothing else differs.
ATOL = RTOL = 1e-4


def with_offsets(model: FaPNForSemanticSegmentation) -> FaPNForSemanticSegmentation:
    """Gives every FAM's (zero-initialised) offset/mask conv random weights: offsets of a few pixels."""
    with torch.no_grad():
        for alignment in model.fapn.neck.alignments:
            torch.nn.init.normal_(alignment.deform_conv.offset_mask_conv.weight, std=0.05)
    return model


@pytest.fixture(scope="module")
def exported_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("onnx_model")
    model = with_offsets(FaPNForSemanticSegmentation(tiny_config())).eval()
    model.save_pretrained(folder)
    FaPNImageProcessor(do_resize=False).save_pretrained(folder)
    path = export_onnx(model, folder, atol=ATOL, rtol=RTOL)
    return folder, model, path


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 160, 128), (1, 3, 75, 50)])
def test_exported_logits_equal_eager_at_several_sizes(exported_folder, shape):
    folder, model, path = exported_folder
    assert path == folder / ONNX_FILE_NAME
    onnx_model = OnnxRuntimeModel(folder)  # config read from the folder
    pixel_values = torch.randn(*shape)
    with torch.no_grad():
        expected = model(pixel_values).logits
    actual = onnx_model(pixel_values=pixel_values).logits
    assert actual.shape == expected.shape == (shape[0], 4, *shape[2:])
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


def test_graph_has_dynamic_batch_height_and_width(exported_folder):
    _, _, path = exported_folder
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "pixel_values"
    batch, channels, height, width = graph_input.shape
    assert channels == 3 and all(isinstance(side, str) for side in (batch, height, width))
    (logits,) = session.run(None, {"pixel_values": np.zeros((3, 3, 96, 32), np.float32)})
    assert logits.shape == (3, 4, 96, 32)


def test_graph_samples_each_deformable_convolution_with_one_grid_sample(exported_folder):
    """Issue 22: the pure-PyTorch deformable convolution exports as GridSample + Mul + MatMul, which onnxruntime runs
    fast, not as a gather and a sum over the whole map (ReduceSum), which made the graph 8x slower than eager."""
    onnx = pytest.importorskip("onnx")
    _, model, path = exported_folder
    op_types = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert op_types["GridSample"] == len(model.fapn.neck.alignments) > 0
    assert "ReduceSum" not in op_types and "DeformConv" not in op_types


def test_predictor_backends_agree_on_label_maps(exported_folder):
    folder, _, _ = exported_folder
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    torch_predictor = SegmentationPredictor.from_pretrained(str(folder), device="cpu", backend="torch")
    onnx_predictor = SegmentationPredictor.from_pretrained(str(folder), device="cpu", backend="onnxruntime")
    auto_predictor = SegmentationPredictor.from_pretrained(str(folder), device="cpu", backend="auto")
    assert isinstance(onnx_predictor.model, OnnxRuntimeModel) and isinstance(auto_predictor.model, OnnxRuntimeModel)
    assert isinstance(torch_predictor.model, FaPNForSemanticSegmentation)
    assert onnx_predictor.id2label == torch_predictor.id2label

    tta = TTAConfig(scales=(0.75, 1.0), flip=True)
    probabilities = onnx_predictor.predict_probabilities(image, tta)
    torch.testing.assert_close(probabilities, torch_predictor.predict_probabilities(image, tta), atol=1e-5, rtol=0)
    labels = onnx_predictor.predict(image)
    assert labels.shape == (70, 90)
    assert (labels == torch_predictor.predict(image)).mean() > 0.999


def test_auto_backend_without_onnx_file_is_torch_and_onnxruntime_backend_says_what_to_do(tmp_path):
    FaPNForSemanticSegmentation(tiny_config()).save_pretrained(tmp_path)
    FaPNImageProcessor(do_resize=False).save_pretrained(tmp_path)
    assert isinstance(SegmentationPredictor.from_pretrained(str(tmp_path), backend="auto").model, torch.nn.Module)
    with pytest.raises(FileNotFoundError, match=r"has no model\.onnx.*fapn-export-onnx"):
        SegmentationPredictor.from_pretrained(str(tmp_path), backend="onnxruntime")
    with pytest.raises(ValueError, match=r"backend must be one of .*'tensorrt'"):
        SegmentationPredictor.from_pretrained(str(tmp_path), backend="tensorrt")
    with pytest.raises(FileNotFoundError, match="no ONNX model at"):
        OnnxRuntimeModel(tmp_path)


def test_verification_catches_a_model_that_differs(exported_folder):
    folder, model, path = exported_folder
    torch.manual_seed(1)
    other = with_offsets(FaPNForSemanticSegmentation(model.config)).eval()  # other random weights
    with pytest.raises(OnnxVerificationError, match=r"differ from PyTorch's by up to .* at input 64x96"):
        verify_onnx(other, path, [(64, 96)])


def test_command_line_export_loads_the_folder_and_writes_model_onnx(tmp_path, capsys, monkeypatch):
    from fapn_hf.export import onnx as fapn_onnx

    FaPNForSemanticSegmentation(tiny_config()).save_pretrained(tmp_path)
    calls = []

    def fake_export(model, target, opset, verify):  # the real export runs in the module fixture
        calls.append((type(model).__name__, opset, verify))
        file = fapn_onnx.onnx_file(target)
        file.write_bytes(b"onnx")
        return file

    monkeypatch.setattr(cli, "export_onnx", fake_export)
    assert cli.export_onnx_main([str(tmp_path), "--opset", "20"]) == 0
    assert calls == [("FaPNForSemanticSegmentation", 20, True)]
    assert f"wrote {tmp_path / ONNX_FILE_NAME}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="^error: model not found"):
        cli.export_onnx_main([str(tmp_path / "missing")])


def test_upload_plan_ships_the_onnx_file_and_exports_one_without_touching_the_folder(exported_folder, monkeypatch):
    from fapn_hf.export import onnx as fapn_onnx
    from fapn_hf.hub.cards import plan_upload

    folder, model, path = exported_folder
    plan = plan_upload(folder, repo_id="org/fapn-tiny")
    assert plan.files["model.onnx"] == path  # a folder's model.onnx goes to the Hub with it

    other = folder.parent / "without_onnx"
    model.save_pretrained(other)
    FaPNImageProcessor(do_resize=False).save_pretrained(other)
    exported = []

    def fake_export(model, target, **_):
        exported.append(type(model).__name__)
        file = fapn_onnx.onnx_file(target)
        file.write_bytes(b"onnx")
        return file

    monkeypatch.setattr(fapn_onnx, "export_onnx", fake_export)
    assert "model.onnx" not in plan_upload(other).files
    plan = plan_upload(other, onnx=True)
    assert exported == ["FaPNForSemanticSegmentation"]
    assert plan.files["model.onnx"].read_bytes() == b"onnx" and plan.files["model.onnx"].parent != other
    assert not (other / "model.onnx").exists()  # the local folder is never modified
