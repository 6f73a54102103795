"""The Gradio Space: its prediction function, the running app over gradio_client, and a real headless browser."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from fapn_hf import FaPNForSemanticSegmentation, FaPNImageProcessor
from fapn_hf.labels import label_maps

REPO_ROOT = Path(__file__).resolve().parents[1]
NAMES = ["background", "blob", "box", "wire"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


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
    FaPNForSemanticSegmentation(tiny_config(id2label=id2label, label2id=label2id)).save_pretrained(folder)
    FaPNImageProcessor(do_resize=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def segmenter(app_module, model_folder):
    loaded = app_module.Segmenter.load(str(model_folder))
    assert loaded.error is None, loaded.error
    return loaded


def _save(tmp_path: Path, name: str, array: np.ndarray) -> str:
    path = tmp_path / name
    Image.fromarray(array).save(path)
    return str(path)


@pytest.mark.parametrize(
    "shape", [(48, 64, 3), (37, 51), (40, 30, 4), (1, 1, 3)], ids=["rgb", "grayscale", "rgba", "one-pixel"]
)
def test_segment_handles_image_modes_and_sizes(app_module, segmenter, tmp_path, shape):
    array = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    (image, annotations), table, status = app_module.segment(segmenter, _save(tmp_path, "x.png", array), True, True)
    height, width = shape[:2]
    assert image.size == (width, height) and image.mode == "RGB"
    masks = np.stack([mask for mask, _ in annotations])
    assert masks.shape[1:] == (height, width) and np.array_equal(masks.sum(0), np.ones((height, width)))
    assert {label for _, label in annotations} <= set(NAMES)
    assert sum(row[2] for row in table) == height * width and sum(row[1] for row in table) == pytest.approx(100, 0.1)
    assert "6 view(s)" in status and "ms" in status  # 3 scales x (image, flipped image)


def test_large_images_are_downscaled_and_mapped_back(app_module, segmenter, tmp_path):
    array = np.random.default_rng(1).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    (image, annotations), _, status = app_module.segment(
        segmenter, _save(tmp_path, "big.png", array), False, False, max_pixels=100 * 100
    )
    assert image.size == (500, 300) and annotations[0][0].shape == (300, 500)
    assert "inferred at 129x77" in status


def test_bad_uploads_give_messages_not_crashes(app_module, segmenter, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    overlay, table, status = app_module.segment(segmenter, str(text), False, False)
    assert overlay is None and table == [] and "notes.png is not an image" in status
    assert "Upload an image first" in app_module.segment(segmenter, None, False, False)[2]
    missing = app_module.Segmenter.load(str(tmp_path / "no-such-model"))
    assert missing.predictor is None and missing.error
    assert "No model loaded" in app_module.segment(missing, str(text), False, False)[2]
    assert app_module.build_app(missing) is not None  # the page still comes up, with the message


@pytest.fixture(scope="module")
def running_app(app_module, segmenter):
    app = app_module.build_app(segmenter)
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    yield app
    app.close()


def test_running_app_over_gradio_client(running_app, tmp_path):
    from gradio_client import Client, handle_file

    path = _save(tmp_path, "client.png", np.random.default_rng(2).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    client = Client(running_app.local_url, verbose=False)
    overlay, table, status = client.predict(handle_file(path), False, False, api_name="/segment")
    assert Image.open(overlay["image"]).size == (56, 40)
    assert Image.open(overlay["annotations"][0]["image"]).size == (56, 40)  # masks at the uploaded size
    assert {a["label"] for a in overlay["annotations"]} <= set(NAMES)
    assert sum(row[2] for row in table["data"]) == 40 * 56
    assert status.startswith("56x40 image; 1 view(s)")


def test_a_real_browser_uploads_segments_and_sees_the_legend(running_app, tmp_path):
    from playwright.sync_api import sync_playwright

    assert shutil.which("chromium") or Path(CHROMIUM).exists(), "Debian's chromium is needed (.ci/run installs it)"
    image = _save(tmp_path, "browser.png", np.random.default_rng(3).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(running_app.local_url, wait_until="domcontentloaded")
        page.locator("input[type=file]").first.set_input_files(image)
        page.get_by_role("button", name="Segment").click()
        page.get_by_text("inference", exact=False).wait_for(timeout=60_000)
        legend = page.locator(".legend")
        legend.wait_for(timeout=30_000)
        legend_text = legend.inner_text()
        screenshot = tmp_path / "space.png"
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert any(name in legend_text for name in NAMES), legend_text
    assert screenshot.stat().st_size > 10_000
    shutil.copy(screenshot, REPO_ROOT / "outputs" / "space_screenshot.png") if (
        REPO_ROOT / "outputs"
    ).is_dir() else None
