"""The Space as published: the folder `fapn-build-space` writes, installed into a fresh virtualenv from its
requirements.txt alone, started from the folder with the model supplied the way a Space gets it, and driven in
headless Chromium.

The model reaches the app as on a Space: by the Hub id in the folder's front matter (`models:`), resolved by
huggingface_hub, here from a local Hub cache in huggingface_hub's own layout (`models--ORG--NAME/snapshots/...`) with
HF_HUB_OFFLINE=1. That exercises the id path of the published app (front matter -> id -> `from_pretrained` and the
model card's tags), which FAPN_MODEL pointing at a folder would skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import tiny_config
from find_chromium import CANDIDATES, OVERRIDE, find_chromium
from huggingface_hub import SpaceCard
from PIL import Image

from fapn_hf import FaPNForSemanticSegmentation, FaPNImageProcessor
from fapn_hf.hub.cards import write_model_card
from fapn_hf.hub.space import build_space
from fapn_hf.labels import label_maps
from fapn_hf.tasks.semantic.demo_data import DEMO_LABELS

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_ID = "fapn-test/fapn-tiny-demo"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def save_demo_model(folder: Path) -> Path:
    """A tiny FaPN with the demo data's classes and a card marking it as trained on the synthetic demo data."""
    id2label, label2id = label_maps(list(DEMO_LABELS))
    config = tiny_config(id2label=id2label, label2id=label2id, num_labels=len(DEMO_LABELS))
    FaPNForSemanticSegmentation(config).save_pretrained(folder)
    FaPNImageProcessor(do_resize=False).save_pretrained(folder)
    write_model_card(folder, config, dataset_name="demo", model_name=MODEL_ID)
    return folder


def populate_hub_cache(hub_cache: Path, repo_id: str, folder: Path) -> None:
    """`folder`'s files as huggingface_hub stores a downloaded snapshot: blobs, a snapshot of links, refs/main."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        if path.is_file():
            blob = repo / "blobs" / f"{path.name}-blob"
            shutil.copy2(path, blob)
            (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the app did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def upload(page: Any, path: Path) -> None:
    """Picks `path` in the upload box and waits until gradio shows it, which it does once the file reached the
    server: a click on Segment before that runs the app without an image (a race a slow CI machine lost)."""
    from playwright.sync_api import expect

    page.locator("input[type=file]").first.set_input_files(str(path))
    expect(page.locator("#upload img")).to_be_attached(timeout=60_000)


def drive_in_browser(url: str, tmp_path: Path, chromium: str) -> Path:
    """Uses the page as a visitor would (model description, upload, result, legend, table, opacity, a bad file's
    message) in the Chromium at path `chromium` and returns a screenshot of the result."""
    from playwright.sync_api import expect, sync_playwright

    image = tmp_path / "upload.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(image)
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("a text file named like a photo")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url, wait_until="domcontentloaded")
        description = page.locator("#model-description")
        expect(description).to_contain_text(MODEL_ID, timeout=60_000)
        expect(description).to_contain_text("Trained on synthetic shapes")
        expect(description).to_contain_text("recognises 6 classes: background, blob, box, wire, dot, shard")

        status = page.locator("#status")
        page.locator("#examples button.gallery-item").first.click()  # a shipped example (256x256 demo image)
        expect(page.locator("#upload img")).to_be_visible(timeout=60_000)  # loaded into the input
        page.get_by_role("button", name="Segment").click()
        expect(status).to_contain_text("256x256 image; 1 view(s)", timeout=120_000)

        page.reload(wait_until="domcontentloaded")
        upload(page, image)
        page.get_by_role("button", name="Segment").click()
        expect(status).to_contain_text("96x64 image; 1 view(s)", timeout=120_000)
        expect(status).to_contain_text("in all")
        legend = page.locator(".fapn-legend")
        expect(legend).to_be_visible()
        legend_text = legend.inner_text()
        assert any(name in legend_text for name in DEMO_LABELS), legend_text
        areas = page.locator("#areas")
        expect(areas).to_contain_text("area (%)")
        expect(areas).to_contain_text(legend_text.split()[0])  # the largest class, first in the legend too
        overlay = page.locator("#overlay img")
        before = overlay.get_attribute("src")

        opacity = page.locator("#opacity input[type=number]")  # the number box next to the slider
        opacity.fill("1")
        opacity.press("Enter")
        expect(overlay).not_to_have_attribute("src", before, timeout=60_000)  # re-drawn, model not re-run
        screenshot = tmp_path / "space.png"
        page.screenshot(path=str(screenshot), full_page=True)

        page.reload(wait_until="domcontentloaded")  # a visitor who uploads a text file named like a photo
        upload(page, not_an_image)
        page.get_by_role("button", name="Segment").click()
        expect(page.get_by_text("notes.jpg could not be read").first).to_be_visible(timeout=60_000)
        page.wait_for_timeout(1000)  # the message slides in
        page.screenshot(path=str(tmp_path / "space_error.png"))
        browser.close()
    return screenshot


@pytest.mark.slow
def test_built_space_starts_from_a_fresh_virtualenv_and_works_in_a_browser(tmp_path):
    chromium = find_chromium()
    assert chromium, f"no Chromium found ({', '.join(CANDIDATES)}, Playwright's): `make browser` installs Debian's one"
    model = save_demo_model(tmp_path / "model")
    hf_home = tmp_path / "hf_home"
    populate_hub_cache(hf_home / "hub", MODEL_ID, model)

    space = tmp_path / "space"
    built = build_space(MODEL_ID, space, model_path=model, num_examples=2)
    card = SpaceCard.load(space / "README.md")
    assert card.data.models == [MODEL_ID] and card.data.app_file == "app.py"
    assert len(card.data.short_description) <= 60 and card.data.sdk_version == __import__("gradio").__version__
    requirements = (space / "requirements.txt").read_text()
    assert "git+" not in requirements and "../" not in requirements and "gradio==" in requirements
    assert len(built.examples) == 2 and all(path.parent == space / "examples" for path in built.examples)

    # A fresh virtualenv from requirements.txt alone; pip's cache (and the machine's package index) serve it.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-compile", "-r", "requirements.txt"],
        cwd=space, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    where = subprocess.run(
        [str(python), "-c", "import fapn_hf; print(fapn_hf.__file__)"],
        cwd=space, env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).resolve() == (space / "fapn_hf" / "__init__.py").resolve()  # not the repo's

    port = _free_port()
    app_env = {
        **env, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    app_env.pop("FAPN_MODEL", None)
    log = tmp_path / "app.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [str(python), "app.py"], cwd=space, env=app_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for(url, process, log)
        screenshot = drive_in_browser(url, tmp_path, chromium)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert screenshot.stat().st_size > 10_000
    if (REPO_ROOT / "outputs").is_dir():
        shutil.copy(screenshot, REPO_ROOT / "outputs" / "space_screenshot.png")
        shutil.copy(tmp_path / "space_error.png", REPO_ROOT / "outputs" / "space_error_screenshot.png")


def test_the_makefile_looks_for_the_browsers_the_test_does():
    """`make test` installs Debian's chromium only when tests/find_chromium.py finds none: its browser target must run
    that finder (not a list of its own that could drift) and tell users about the same override."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "FIND_CHROMIUM ?= $(PY) tests/find_chromium.py" in makefile
    browser_recipe = makefile.split("\nbrowser:", 1)[1].split("\n\n", 1)[0]
    assert browser_recipe.count("$(FIND_CHROMIUM)") >= 2  # before installing, and to check the install
    assert f"{OVERRIDE}=" in browser_recipe and "apt-get install -y -qq chromium" in browser_recipe
    commands = [line for line in makefile.splitlines() if not line.lstrip().startswith("#")]
    assert not any("playwright install" in line for line in commands)  # its download does not work everywhere
    test_target = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert "browser" in test_target.split(":", 1)[1].split()


def test_find_chromium_prefers_the_override_and_refuses_a_wrong_one(monkeypatch, tmp_path):
    import find_chromium as finder

    fake = tmp_path / "chrome"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv(OVERRIDE, str(fake))
    assert finder.find_chromium() == str(fake)
    monkeypatch.setenv(OVERRIDE, str(tmp_path / "missing"))
    with pytest.raises(finder.BrowserOverrideError, match="missing"):
        finder.find_chromium()
    monkeypatch.delenv(OVERRIDE)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "google-chrome").symlink_to(fake)
    monkeypatch.setenv("PATH", str(bin_dir))  # only Google Chrome on PATH: found by name, before Playwright's
    assert finder.find_chromium() == str(bin_dir / "google-chrome")
    monkeypatch.setattr(finder, "playwright_chromium", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert finder.find_chromium() is None
