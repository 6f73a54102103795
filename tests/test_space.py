"""The Gradio Space's app: every kind of upload, the overlay controls, bounded sizes, errors that carry a message,
the model named by settings, and the running app over gradio_client. The built Space folder in a fresh virtualenv
and a real browser: tests/test_space_folder.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from conftest import tiny_config
from image_kinds import KINDS
from PIL import Image

from fapn_hf import FaPNForSemanticSegmentation, FaPNImageProcessor
from fapn_hf.hub.cards import write_model_card
from fapn_hf.labels import label_maps, palette

REPO_ROOT = Path(__file__).resolve().parents[1]
NAMES = ["background", "blob", "box", "wire"]


def _load_app_module():
    spec = importlib.util.spec_from_file_location("space_app_main", REPO_ROOT / "space_app" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app_module():
    return _load_app_module()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("space-model")
    id2label, label2id = label_maps(NAMES)
    config = tiny_config(id2label=id2label, label2id=label2id)
    FaPNForSemanticSegmentation(config).save_pretrained(folder)
    FaPNImageProcessor(do_resize=False).save_pretrained(folder)
    write_model_card(folder, config, dataset_name="demo", model_name="org/fapn-tiny-demo")
    return folder


@pytest.fixture(scope="module")
def segmenter(app_module, model_folder):
    loaded = app_module.load_segmenter(str(model_folder))
    assert loaded.error is None, loaded.error
    return loaded


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


def _save(tmp_path: Path, name: str, array: np.ndarray) -> str:
    path = tmp_path / name
    Image.fromarray(array).save(path)
    return str(path)


@pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
def test_every_kind_of_upload_reaches_the_model_as_decode_image_reads_it(app_module, segmenter, tmp_path, kind):
    """At opacity 0 the overlay is the image the model saw: it must equal the pixels computed independently from
    the stored file (EXIF orientation, 16-bit scaling, transparency over white, first frame)."""
    path, expected = kind.make(tmp_path)
    overlay, legend, table, status, result = app_module.segment(
        segmenter, str(path), False, False, 0.0, False, str(tmp_path / "cache")
    )
    shown = np.asarray(Image.open(overlay))
    assert shown.shape == expected.shape and np.array_equal(shown, expected)
    height, width = expected.shape[:2]
    assert result.labels.shape == (height, width)
    assert sum(row[2] for row in table) == height * width and sum(row[1] for row in table) == pytest.approx(100, 0.1)
    assert status.startswith(f"{width}x{height} image; 1 view(s);") and " s** in all" in status
    assert ("first frame" in status) == (kind.name == "animated")
    assert all(f">{row[0]}" in legend for row in table)  # every class in the result is in the legend


def test_one_pixel_and_test_time_augmentation(app_module, segmenter, tmp_path, cache_dir):
    path = _save(tmp_path, "dot.png", np.array([[[10, 200, 30]]], np.uint8))
    *_, status, result = app_module.segment(segmenter, path, True, True, 0.5, True, cache_dir)
    assert result.labels.shape == (1, 1) and "6 view(s)" in status  # 3 scales x (image, mirrored image)


def test_opacity_and_hide_background_paint_exactly_the_documented_blend(app_module, segmenter, tmp_path, cache_dir):
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, len(NAMES), (12, 16)).astype(np.uint16)
    result = app_module.Segmentation(image, labels)
    colors = palette(len(NAMES), NAMES).astype(np.float64)
    for opacity, hide in ((0.3, False), (0.8, True), (1.0, True)):
        path, legend, _ = app_module.render(segmenter, result, opacity, hide, cache_dir)
        shown = np.asarray(Image.open(path)).astype(np.float64)
        expected = (1 - opacity) * image + opacity * colors[labels]
        if hide:  # NAMES[0] is "background": those pixels show the photo
            expected[labels == 0] = image[labels == 0]
        assert np.abs(shown - expected).max() <= 0.5 + 1e-6, (opacity, hide)
        assert ("background (not painted)" in legend) == hide


def test_huge_uploads_are_reduced_right_after_reading(app_module, segmenter, tmp_path, cache_dir):
    array = np.random.default_rng(1).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    overlay, _, table, status, result = app_module.segment(
        segmenter, _save(tmp_path, "big.png", array), False, False, 0.5, True, cache_dir, max_pixels=100 * 100
    )
    assert Image.open(overlay).size == (129, 77) and result.labels.shape == (77, 129)  # 129 * 77 <= 100 * 100
    assert sum(row[2] for row in table) == 77 * 129
    assert status.startswith("500x300 image, segmented and shown at 129x77")


def _message(error: pytest.ExceptionInfo) -> str:
    return str(error.value.message if hasattr(error.value, "message") else error.value)


def test_bad_uploads_fail_with_a_message_naming_the_file(app_module, segmenter, tmp_path, cache_dir):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    for path, expected in (
        (empty, "empty.png is empty (0 bytes)"),
        (text, "notes.jpg could not be read: its content is not an image"),
        (None, "Upload an image first"),
    ):
        with pytest.raises(gr.Error) as error:
            app_module.segment(segmenter, None if path is None else str(path), False, False, 0.5, True, cache_dir)
        assert expected in _message(error) and str(tmp_path) not in _message(error)


def test_a_model_that_does_not_load_leaves_the_page_with_a_message(app_module, tmp_path, cache_dir):
    missing = app_module.load_segmenter("org/no-such-model-anywhere")
    assert missing.predictor is None and "org/no-such-model-anywhere could not be loaded" in missing.error
    assert "HF_TOKEN" in missing.error and "FAPN_MODEL" in missing.error
    with pytest.raises(gr.Error, match="could not be loaded"):
        app_module.segment(missing, _save(tmp_path, "x.png", np.zeros((4, 4, 3), np.uint8)), 0, 0, 0.5, 1, cache_dir)
    assert "could not be loaded" in app_module.describe_model(missing)
    assert app_module.build_app(missing) is not None  # the page still comes up, with the message
    assert "No model is configured" in app_module.load_segmenter(None).error


def test_the_model_comes_from_fapn_model_then_the_front_matter(app_module, tmp_path, monkeypatch):
    monkeypatch.delenv("FAPN_MODEL", raising=False)
    assert app_module.model_id_from_settings(tmp_path) is None  # no README.md: no model, and no fallback path
    (tmp_path / "README.md").write_text("---\nsdk: gradio\nmodels:\n- org/fapn-a\n- org/fapn-b\n---\n# Space\n")
    assert app_module.model_id_from_settings(tmp_path) == "org/fapn-a"
    monkeypatch.setenv("FAPN_MODEL", "org/fapn-c")
    assert app_module.model_id_from_settings(tmp_path) == "org/fapn-c"


def test_the_page_names_the_model_its_classes_and_its_synthetic_training_data(app_module, segmenter, model_folder):
    text = app_module.describe_model(segmenter)
    assert "It recognises 4 classes: background, blob, box, wire." in text and "synthetic shapes" in text
    assert str(model_folder) not in text and segmenter.display_name == f"local folder {model_folder.name}"
    assert app_module.load_segmenter(str(model_folder)).synthetic
    assert not app_module.Segmenter("org/x", names=["road", "sky"]).background_ids


@pytest.fixture(scope="module")
def running_app(app_module, segmenter):
    app = app_module.build_app(segmenter)
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, css=app_module.CSS)
    yield app
    app.close()


def test_running_app_over_gradio_client(running_app, tmp_path):
    from gradio_client import Client, handle_file

    path = _save(tmp_path, "client.png", np.random.default_rng(2).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    client = Client(running_app.local_url, verbose=False)
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/segment"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == [
        "image", "flip", "multiscale", "opacity", "hide_background",
    ]  # fmt: skip
    overlay, legend, table, status = client.predict(
        image=handle_file(path), flip=False, multiscale=False, opacity=0.5, hide_background=True, api_name="/segment"
    )
    assert Image.open(overlay).size == (56, 40)
    assert sum(row[2] for row in table["data"]) == 40 * 56 and table["headers"] == ["class", "area (%)", "pixels"]
    assert status.startswith("56x40 image; 1 view(s)") and "fapn-legend" in legend

    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(Exception, match="notes.jpg could not be read"):  # the call fails, with the message
        client.predict(image=handle_file(str(text)), api_name="/segment")


def test_the_gradio_client_example_of_the_space_readme_runs_against_the_app(running_app, tmp_path, monkeypatch):
    from fapn_hf.hub.space import space_card

    card = str(space_card("org/fapn-tiny-demo", "FaPN", "FaPN semantic segmentation", ["gradio==6"]))
    example = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'Client("OWNER/SPACE-NAME")' in example and 'handle_file("photo.jpg")' in example
    _save(tmp_path, "photo.jpg", np.random.default_rng(5).integers(0, 255, (30, 44, 3), dtype=np.uint8))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(example.replace("OWNER/SPACE-NAME", running_app.local_url), namespace)  # the README's code, as written
    assert namespace["status"].startswith("44x30 image; 1 view(s)")
    assert sum(row[2] for row in namespace["areas"]["data"]) == 30 * 44


def test_build_space_checks_its_inputs_before_writing_anything(tmp_path):
    from fapn_hf.hub.space import build_space

    with pytest.raises(ValueError, match="invalid model repo id 'not an id'"):
        build_space("not an id", tmp_path / "a")
    with pytest.raises(ValueError, match="at most 60"):
        build_space("org/fapn", tmp_path / "b", short_description="x" * 61)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        build_space("org/fapn", tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="example images not found"):
        build_space("org/fapn", tmp_path / "d", examples=[tmp_path / "missing.jpg"])
    assert not any((tmp_path / name).exists() for name in "abd") and (tmp_path / "c" / "keep.txt").read_text() == "mine"


def test_build_space_ships_given_examples_as_they_are(tmp_path, model_folder):
    from huggingface_hub import SpaceCard

    from fapn_hf.hub.space import build_space

    photo = _save(tmp_path, "Street.JPG", np.zeros((8, 8, 3), np.uint8))
    space = build_space("org/fapn-city", tmp_path / "space", model_path=model_folder, examples=[photo])
    assert [path.name for path in space.examples] == ["example_0.jpg"] and not space.example_scores
    assert (space.folder / "examples" / "example_0.jpg").read_bytes() == Path(photo).read_bytes()
    assert SpaceCard.load(space.folder / "README.md").data.models == ["org/fapn-city"]
    assert (space.folder / "fapn_hf" / "__init__.py").is_file() and (space.folder / "app.py").is_file()


def test_a_maskformer_fapn_model_segments_too(app_module, tmp_path, cache_dir):
    """The Space serves the second model family through the same predictor (PyTorch: it has no ONNX export)."""
    from test_maskformer_fapn import tiny_maskformer_config

    from fapn_hf import MaskFormerFaPNForInstanceSegmentation, MaskFormerFaPNImageProcessor

    folder = tmp_path / "maskformer"
    id2label, label2id = label_maps(NAMES)
    MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config(id2label=id2label, label2id=label2id)).save_pretrained(
        folder
    )
    MaskFormerFaPNImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(folder)
    segmenter = app_module.load_segmenter(str(folder))
    assert segmenter.error is None, segmenter.error
    path = _save(tmp_path, "photo.png", np.random.default_rng(2).integers(0, 256, (40, 52, 3), dtype=np.uint8))
    overlay, legend, table, status, result = app_module.segment(segmenter, path, True, False, 0.5, False, cache_dir)
    assert result.labels.shape == (40, 52) and result.labels.max() < len(NAMES)
    assert "2 view(s)" in status and Path(overlay).is_file()
    assert sum(row[2] for row in table) == 40 * 52 and all(f">{row[0]}" in legend for row in table)
