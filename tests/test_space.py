"""The Gradio Space's app: every kind of upload, the overlay controls, bounded sizes, errors that carry a message,
the model named by settings, and the running app over gradio_client. The built Space folder in a fresh virtualenv
and a real browser: tests/test_space_folder.py."""

from __future__ import annotations

import importlib.util
import logging
import re
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
    assert status.startswith("500x300 image (0.15 megapixels): reduced to 129x77 (9,933 pixels) for segmentation; ")


def test_a_decompression_bomb_warning_is_said_in_the_apps_words_and_logged(
    app_module, segmenter, tmp_path, cache_dir, monkeypatch, caplog
):
    """PIL warns above MAX_IMAGE_PIXELS (89 megapixels: a 108-megapixel photo): the page says what the app did with
    the image, the server log keeps PIL's words. The limit is lowered here so that a small file crosses it."""
    path = _save(tmp_path, "large.png", np.random.default_rng(6).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # 120 * 90 = 10,800 pixels: a warning, not an error
    with caplog.at_level(logging.INFO, logger="fapn_space"):
        *_, status, result = app_module.segment(segmenter, path, False, False, 0.5, True, cache_dir, max_pixels=2500)
    assert result.labels.shape == (43, 57)
    assert status.startswith("120x90 image (0.0108 megapixels): reduced to 57x43 (2,451 pixels) for segmentation; ")
    assert "bomb" not in status and "Note" not in status
    assert any("decompression bomb" in record.getMessage() for record in caplog.records)


def _message(error: pytest.ExceptionInfo) -> str:
    return str(error.value.message if hasattr(error.value, "message") else error.value)


def _truncated_jpeg(tmp_path: Path, name: str = "cut.jpg") -> str:
    """A JPEG whose second half is missing, as after an interrupted download: PIL reads its header, not its pixels."""
    full = tmp_path / f"full-{name}"
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def test_bad_uploads_fail_with_a_message_naming_the_file(app_module, segmenter, tmp_path, cache_dir):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    for path, expected in (
        (empty, "empty.png is empty (0 bytes)"),
        (text, "notes.jpg could not be read: its content is not an image"),
        (_truncated_jpeg(tmp_path), "cut.jpg is cut short (truncated)"),
        (None, "Upload an image first"),
    ):
        with pytest.raises(gr.Error) as error:
            app_module.segment(segmenter, None if path is None else str(path), False, False, 0.5, True, cache_dir)
        assert expected in _message(error) and str(tmp_path) not in _message(error)
    with pytest.raises(gr.Error) as error:  # PIL knows it is a JPEG: it is not called "not an image"
        app_module.segment(segmenter, _truncated_jpeg(tmp_path, "photo.jpg"), False, False, 0.5, True, cache_dir)
    assert "not an image" not in _message(error) and "Upload the complete file" in _message(error)


def test_small_areas_keep_three_significant_digits(app_module, segmenter, cache_dir):
    """24 pixels of a megapixel is 0.00229 %, not 0.0 %: every class present has a positive area."""
    labels = np.zeros((1024, 1024), np.uint16)
    labels.flat[:24] = 1
    labels[512:, :] = 2
    result = app_module.Segmentation(np.zeros((1024, 1024, 3), np.uint8), labels)
    _, _, table = app_module.render(segmenter, result, 0.5, False, cache_dir)
    assert table == [["box", 50.0, 524288], ["background", 50.0, 524264], ["blob", 0.00229, 24]]
    assert all(isinstance(row[1], float) and isinstance(row[2], int) for row in table)
    assert app_module.area_percent(1, 3) == 33.3 and app_module.area_percent(2, 3) == 66.7
    assert app_module.area_percent(3, 3) == 100.0 and app_module.area_percent(1, 10**9) == 1e-7


def test_a_model_that_does_not_load_leaves_the_page_with_a_message(app_module, tmp_path, cache_dir, caplog):
    with caplog.at_level(logging.ERROR, logger="fapn_space"):
        missing = app_module.load_segmenter("org/no-such-model-anywhere")
    # The server log, where a Space owner looks, says what the page says, with the traceback.
    (record,) = [record for record in caplog.records if record.name == "fapn_space"]
    assert record.levelno == logging.ERROR and record.getMessage() == missing.error and record.exc_info is not None
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


def test_start_up_says_in_the_server_log_what_is_served(app_module, model_folder, monkeypatch, capsys):
    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    for model, expected in (
        (str(model_folder), f"FaPN Space: serving local folder {model_folder.name} (4 classes)"),
        ("org/no-such-model-anywhere", "FaPN Space: serving no model. The model org/no-such-model-anywhere could not"),
    ):
        monkeypatch.setattr(sys, "argv", ["app.py", "--model", model, "--port", "7999"])
        app_module.main()
        assert expected in capsys.readouterr().out and launched.pop()["server_port"] == 7999


@pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
def test_files_browsers_cannot_show_get_a_png_preview_of_what_is_segmented(app_module, tmp_path, cache_dir, kind):
    """TIFF (the kinds stored as .tif) is previewed as a PNG holding exactly the pixels the model is given; files
    browsers display themselves get no preview."""
    path, expected = kind.make(tmp_path)
    preview = app_module.browser_preview(str(path), cache_dir)
    assert (preview is not None) == (kind.suffix == ".tif"), kind.name
    if preview is not None:
        preview_path, format_name = preview
        assert format_name == "TIFF" and preview_path.endswith(".png") and preview_path.startswith(cache_dir)
        assert np.array_equal(np.asarray(Image.open(preview_path)), expected)


def test_a_new_image_clears_the_result_and_a_preview_stands_for_its_file(app_module, segmenter, tmp_path, cache_dir):
    page = app_module.PageState()
    photo = _save(tmp_path, "photo.png", np.random.default_rng(8).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    assert app_module.new_image(page, photo, cache_dir) == (None, "", [], "", gr.skip())  # a PNG: no preview
    overlay, legend, table, status = app_module.page_segment(segmenter, page, photo, False, False, 0.5, True, cache_dir)
    assert status.startswith("40x30 image") and page.result is not None and Path(overlay).is_file() and table

    skip = gr.skip()
    tiff = tmp_path / "scan.tif"
    Image.fromarray(np.random.default_rng(9).integers(0, 255, (24, 36, 3), dtype=np.uint8)).save(tiff)
    cleared = app_module.new_image(page, str(tiff), cache_dir)
    assert cleared[:3] == (None, "", []) and "Browsers cannot show TIFF files" in cleared[3]
    assert cleared[4] == page.preview and page.shown == str(tiff) and page.result is None
    assert app_module.redraw(segmenter, page, 0.9, True, cache_dir) == (skip, skip)  # no result: nothing to draw
    assert app_module.new_image(page, page.preview, cache_dir) == (skip,) * 5  # the preview coming back changes nothing
    *_, status = app_module.page_segment(segmenter, page, page.preview, False, False, 0.5, True, cache_dir)
    assert status.startswith("36x24 image") and np.array_equal(page.result.image, np.asarray(Image.open(tiff)))
    overlay, _ = app_module.redraw(segmenter, page, 1.0, False, cache_dir)
    assert Image.open(overlay).size == (36, 24)

    assert app_module.new_image(page, str(tiff), cache_dir)[:4] == (skip,) * 4  # the same file again: kept
    assert app_module.new_image(page, None, cache_dir)[:4] == (None, "", [], "")  # cleared by the visitor
    assert page.shown is None and page.preview is None and page.result is None


def test_a_failed_request_clears_the_page_and_says_why_once(app_module, segmenter, tmp_path, cache_dir):
    page = app_module.PageState()
    photo = _save(tmp_path, "photo.png", np.zeros((16, 16, 3), np.uint8))
    app_module.new_image(page, photo, cache_dir)
    app_module.page_segment(segmenter, page, photo, False, False, 0.5, True, cache_dir)
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    app_module.new_image(page, str(notes), cache_dir)
    outputs = app_module.page_segment(segmenter, page, str(notes), False, False, 0.5, True, cache_dir)
    assert outputs[:3] == (None, "", []) and page.result is None  # no result of the previous image survives
    assert outputs[3].startswith("⚠️ **Not segmented.** notes.jpg could not be read: its content is not an image")
    assert app_module.redraw(segmenter, page, 0.2, False, cache_dir) == (gr.skip(), gr.skip())
    app_module.new_image(page, None, cache_dir)  # the visitor cleared the input
    *_, status = app_module.page_segment(segmenter, page, None, False, False, 0.5, True, cache_dir)
    assert status == "⚠️ **Not segmented.** Upload an image first (PNG, JPEG, WebP, GIF, TIFF or BMP)."


def test_a_result_that_arrives_after_the_image_changed_is_dropped(app_module, segmenter, tmp_path, cache_dir):
    first = _save(tmp_path, "first.png", np.zeros((16, 16, 3), np.uint8))
    second = _save(tmp_path, "second.png", np.full((16, 24, 3), 255, np.uint8))
    page = app_module.PageState()
    app_module.new_image(page, first, cache_dir)

    class VisitorUploadsWhileTheModelRuns:
        def __init__(self, predictor):
            self.predictor = predictor

        def predict(self, *args, **kwargs):
            app_module.new_image(page, second, cache_dir)  # the upload event, served while the model runs
            return self.predictor.predict(*args, **kwargs)

    busy = app_module.Segmenter(
        segmenter.model_id, VisitorUploadsWhileTheModelRuns(segmenter.predictor), names=segmenter.names
    )
    assert app_module.page_segment(busy, page, first, False, False, 0.5, True, cache_dir) == (gr.skip(),) * 4
    assert page.shown == second and page.result is None
    *_, status = app_module.page_segment(segmenter, page, second, False, False, 0.5, True, cache_dir)
    assert status.startswith("24x16 image") and page.result.image.shape == (16, 24, 3)


def test_the_upload_box_hands_any_file_to_the_app_also_after_gradio_rebuilt_it(app_module, tmp_path):
    """gradio opens an upload with PIL before the app runs, failing a text file with a bare "Error"; the app's box
    passes the file on, also as gradio rebuilds it per session from its constructor arguments (after an example
    click or a preview), while every other gr.Image keeps gradio's check."""
    from gradio.data_classes import ImageData

    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    payload = ImageData(path=str(text), orig_name="notes.jpg")
    box = app_module.image_upload(label="Image")
    rebuilt = gr.Image(**{**box.constructor_args, "render": False})
    assert box.preprocess(payload) == rebuilt.preprocess(payload) == str(text)
    with pytest.raises(Exception, match="cannot identify image file"):
        gr.Image(type="filepath", image_mode=None).preprocess(payload)


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
    api = client.view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/segment"] and not api["unnamed_endpoints"]  # page events: private
    endpoint = api["named_endpoints"]["/segment"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == [
        "image", "flip", "multiscale", "opacity", "hide_background",
    ]  # fmt: skip
    assert [(r["label"], r["component"]) for r in endpoint["returns"]] == [
        ("Overlay", "Image"), ("Legend", "Html"), ("Areas", "Dataframe"), ("Status", "Markdown"),
    ]  # fmt: skip
    overlay, legend, table, status = client.predict(
        image=handle_file(path), flip=False, multiscale=False, opacity=0.5, hide_background=True, api_name="/segment"
    )
    assert Image.open(overlay).size == (56, 40)
    assert table["headers"] == ["class", "area (%)", "pixels"]
    assert all(type(row[0]) is str and type(row[1]) is float and type(row[2]) is int for row in table["data"])
    assert sum(row[2] for row in table["data"]) == 40 * 56 and all(row[1] > 0 for row in table["data"])
    assert status.startswith("56x40 image; 1 view(s)") and "fapn-legend" in legend

    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(Exception, match="notes.jpg could not be read") as error:  # the call fails, with the message
        client.predict(image=handle_file(str(text)), api_name="/segment")
    assert "Traceback" not in str(error.value)


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


def test_the_space_installs_cpu_only_torch_and_only_what_the_app_imports(tmp_path, model_folder):
    """requirements.txt of a CPU Space: PyTorch's CPU index and `+cpu` builds on Linux (the Space's platform), the
    registry's torch elsewhere, no CUDA package, no training-only package; a GPU Space pins the registry's torch."""
    from importlib import metadata

    from huggingface_hub import SpaceCard
    from packaging.requirements import Requirement
    from packaging.version import Version

    from fapn_hf.hub.space import build_space, pinned_requirements, requirements_file

    torch_version = Version(metadata.version("torch")).public
    photo = _save(tmp_path, "photo.png", np.zeros((8, 8, 3), np.uint8))
    space = build_space("org/fapn-city", tmp_path / "space", model_path=model_folder, examples=[photo])
    lines = [line for line in (space.folder / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    requirements = [Requirement(line) for line in lines[1:]]
    assert {r.name for r in requirements} == {
        "torch", "torchvision", "timm", "transformers", "safetensors", "huggingface-hub", "pillow", "numpy",
        "pyyaml", "scipy", "pyspng", "pycocotools", "gradio",
    }  # fmt: skip

    def torch_pins(platform: str) -> list[str]:
        return [
            str(r.specifier)
            for r in requirements
            if r.name == "torch" and r.marker.evaluate({"sys_platform": platform})
        ]

    assert torch_pins("linux") == [f"=={torch_version}+cpu"] and torch_pins("darwin") == [f"=={torch_version}"]
    assert not any(re.search(r"nvidia|cuda|triton|\+cu\d", line.lower()) for line in lines)
    assert SpaceCard.load(space.folder / "README.md").data.suggested_hardware == "cpu-basic"

    gpu = pinned_requirements(gpu=True)
    assert f"torch=={torch_version}" in gpu and not any("+cpu" in line or ";" in line for line in gpu)
    assert "--extra-index-url" not in requirements_file(gpu)
    gpu_space = build_space("org/fapn-gpu", tmp_path / "gpu", model_path=model_folder, examples=[photo], gpu=True)
    assert SpaceCard.load(gpu_space.folder / "README.md").data.suggested_hardware == "t4-small"


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


# ---------------------------------------------------------------------------------------------------------------------
# Detectors: the page draws what the model's family calls for
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector_folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny random detectors (every proposal scored, so that they detect something) saved as folders."""
    import torch
    from test_modeling_fapn_rcnn import tiny_rcnn_config

    from fapn_hf.modeling.image_processing_fapn_rcnn import FaPNRCNNImageProcessor
    from fapn_hf.modeling.modeling_fapn_rcnn import FaPNRCNNForObjectDetection

    folders = {}
    for architecture in ("faster_rcnn", "mask_rcnn", "panoptic_fpn"):
        folder = tmp_path_factory.mktemp(architecture)
        torch.manual_seed(0)
        config = tiny_rcnn_config(architecture)
        FaPNRCNNForObjectDetection(config).save_pretrained(folder)
        FaPNRCNNImageProcessor(
            size={"shortest_edge": 64, "longest_edge": 96},
            meta_architecture=architecture,
            num_thing_labels=config.num_thing_labels,
        ).save_pretrained(folder)
        folders[architecture] = folder
    return folders


def _scene(seed: int) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 255, (44, 60, 3), dtype=np.uint8)
    image[4:28, 6:34] = (210, 40, 40)
    image[18:40, 30:58] = (40, 40, 220)
    return image


@pytest.mark.parametrize("architecture", ["faster_rcnn", "mask_rcnn"])
def test_a_detector_draws_what_scores_at_least_the_threshold_and_the_slider_redraws_it(
    app_module, detector_folders, tmp_path, cache_dir, architecture
):
    """The drawing is `draw_detections` of the predictor's own detections at the slider's threshold, the table lists
    exactly those detections; moving the threshold re-draws the kept result (no model) and changes both."""
    from fapn_hf.tasks.detection.visualization import draw_detections

    detector = app_module.load_segmenter(str(detector_folders[architecture]))
    assert detector.error is None, detector.error
    assert detector.kind == app_module.DETECTION and detector.names == ["cat", "dog", "car"]
    name = {"faster_rcnn": "Faster R-CNN", "mask_rcnn": "Mask R-CNN"}[architecture]
    assert f"{name} with the FaPN (FAM + FSM) neck" in app_module.describe_model(detector)
    image = _scene(3)
    path = _save(tmp_path, "street.png", image)
    found = detector.predictor.predict(image)  # the reference: the predictor on the same pixels
    assert (found.masks is not None) == (architecture == "mask_rcnn") and len(found.scores) >= 4
    scores = np.sort(found.scores.astype(np.float64))
    low, high = float(scores[len(scores) // 4]), float(scores[3 * len(scores) // 4])

    def expected(threshold: float, opacity: float) -> np.ndarray:
        names, colors = detector.names, palette(3, detector.names)
        drawn = draw_detections(
            image, found.boxes, found.labels, found.scores, names, colors, found.masks, threshold, opacity
        )
        return np.asarray(drawn)

    page = app_module.PageState()
    app_module.new_image(page, path, cache_dir)
    drawing, legend, table, status = app_module.page_segment(
        detector, page, path, False, False, 0.4, False, cache_dir, high
    )
    assert np.array_equal(np.asarray(Image.open(drawing)), expected(high, 0.4))
    assert not np.array_equal(expected(high, 0.4), image)  # something is drawn
    kept = np.nonzero(found.scores.astype(np.float64) >= high)[0]
    assert [row[0] for row in table] == [detector.names[found.labels[i]] for i in kept]
    assert [row[1] for row in table] == [round(float(found.scores[i]), 3) for i in kept]
    assert np.allclose([row[2:] for row in table], found.boxes[kept], atol=0.051)
    assert status.startswith("60x44 image; 1 view(s)") and page.result is not None
    assert all(f">{row[0]} ×" in legend for row in table)

    lower = app_module.redraw(detector, page, 0.4, False, cache_dir, low)  # the slider: (drawing, legend, table)
    assert np.array_equal(np.asarray(Image.open(lower[0])), expected(low, 0.4))
    assert len(lower[2]) == int((scores >= low).sum()) > len(table)
    nothing, empty_legend, no_rows = app_module.redraw(detector, page, 0.4, False, cache_dir, 1.01)
    assert np.array_equal(np.asarray(Image.open(nothing)), image) and no_rows == [] and "×" not in empty_legend

    with pytest.raises(gr.Error, match="is a detector: flip and multi-scale"):
        app_module.segment(detector, path, True, False, 0.5, False, cache_dir)
    app_module.new_image(page, None, cache_dir)  # a new (here: no) image drops the kept result
    assert app_module.redraw(detector, page, 0.4, False, cache_dir, low) == (gr.skip(),) * 3


def test_a_panoptic_detector_draws_its_panoptic_map_with_segment_names(
    app_module, detector_folders, tmp_path, cache_dir
):
    from fapn_hf.tasks.detection.visualization import draw_panoptic

    detector = app_module.load_segmenter(str(detector_folders["panoptic_fpn"]))
    assert detector.error is None and detector.kind == app_module.PANOPTIC
    assert "Panoptic FPN" in app_module.describe_model(detector) and "panoptic map" in app_module.describe_model(
        detector
    )
    image = _scene(5)
    found = detector.predictor.predict(image)
    segmentation, segments = found.panoptic
    drawing, legend, table, status, result = app_module.segment(
        detector, _save(tmp_path, "scene.png", image), False, False, 0.6, False, cache_dir
    )
    expected = draw_panoptic(image, segmentation, segments, detector.names, palette(5, detector.names), alpha=0.6)
    assert np.array_equal(np.asarray(Image.open(drawing)), np.asarray(expected))
    assert table and [row[0] for row in table] == [s["id"] for s in segments if (segmentation == s["id"]).any()]
    assert sum(row[4] for row in table) == int((segmentation > 0).sum())
    assert [row[1] for row in table] == [
        detector.names[s["label_id"]] for s in segments if (segmentation == s["id"]).any()
    ]
    assert all(f">{row[1]} ×" in legend for row in table)
    # The map has its own combination settings: the threshold does not change it.
    again, *_ = app_module.render(detector, result, 0.6, False, cache_dir, threshold=0.99)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(expected))


def test_a_detector_space_serves_detect_over_gradio_client(app_module, detector_folders, tmp_path):
    from gradio_client import Client, handle_file

    detector = app_module.load_segmenter(str(detector_folders["mask_rcnn"]))
    app = app_module.build_app(detector)
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(app.local_url, verbose=False)
        api = client.view_api(print_info=False, return_format="dict")
        assert list(api["named_endpoints"]) == ["/detect"] and not api["unnamed_endpoints"]
        endpoint = api["named_endpoints"]["/detect"]
        assert [p["parameter_name"] for p in endpoint["parameters"]] == ["image", "threshold", "opacity"]
        assert [r["label"] for r in endpoint["returns"]] == ["Overlay", "Legend", "Detections", "Status"]
        image = _scene(7)
        drawing, legend, table, status = client.predict(
            image=handle_file(_save(tmp_path, "scene.png", image)), threshold=0.0, opacity=0.5, api_name="/detect"
        )
        assert table["headers"] == ["class", "score", "x0", "y0", "x1", "y1"]
        assert len(table["data"]) == len(detector.predictor.predict(image).scores)  # threshold 0: every detection
        assert Image.open(drawing).size == (60, 44) and status.startswith("60x44 image")
    finally:
        app.close()


@pytest.mark.parametrize(
    ("architecture", "endpoint", "parameters", "tag"),
    [
        ("faster_rcnn", "/detect", ("image", "threshold", "opacity"), "object-detection"),
        ("mask_rcnn", "/detect", ("image", "threshold", "opacity"), "instance-segmentation"),
        ("panoptic_fpn", "/segment", ("image", "opacity"), "panoptic-segmentation"),
    ],
)
def test_a_detector_space_card_describes_the_page_the_app_serves(
    detector_folders, tmp_path, architecture, endpoint, parameters, tag
):
    """`fapn-build-space` for a detector: the card's title, tags, API table and client example are the detector
    page's (the semantic card's `/segment` with flip and multi-scale was written for every model)."""
    from huggingface_hub import SpaceCard

    from fapn_hf.hub.space import build_space

    space = build_space("org/fapn-detector", tmp_path / "space", model_path=detector_folders[architecture])
    card = SpaceCard.load(space.folder / "README.md")
    assert tag in card.data.tags and "semantic-segmentation" not in card.data.tags
    assert card.data.title == f"FaPN {tag.replace('-', ' ')}" and "semantic" not in card.data.short_description
    table = card.text.split("with these parameters:", 1)[1].split("It returns", 1)[0]
    assert f"One endpoint, `{endpoint}`" in card.text and "flip" not in table
    assert [row.split("`")[1] for row in table.splitlines() if row.startswith("| `")] == list(parameters)
    example = card.text.split("```python\n", 1)[1].split("```", 1)[0]
    assert f'api_name="{endpoint}"' in example and all(f"{name}=" in example for name in parameters)
    assert not space.examples  # demo examples are chosen by mIoU, for the semantic families only
