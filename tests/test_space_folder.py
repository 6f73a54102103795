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
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import tiny_config
from find_chromium import CANDIDATES, OVERRIDE, find_chromium
from huggingface_hub import SpaceCard
from packaging.version import Version
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


def folder_size(folder: Path) -> int:
    """Bytes of the files under `folder` (what `du` counts, without block rounding)."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


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


def upload(page: Any, path: Path, shown_as: str | None = None) -> None:
    """Picks `path` in the upload box and waits until gradio shows it (as `shown_as`, the name of the file the input
    displays, when the app replaces it by a preview), which it does once the file reached the server: a click on
    Segment before that runs the app on the previous image (a race a slow CI machine lost)."""
    from playwright.sync_api import expect

    page.locator("#upload input[type=file]").set_input_files(str(path))
    expect(page.locator(f'#upload img[src*="{shown_as or path.name}"]')).to_be_attached(timeout=60_000)


def segment_and_wait(page: Any, expected_status: str) -> None:
    from playwright.sync_api import expect

    page.get_by_role("button", name="Segment").click()
    expect(page.locator("#status")).to_contain_text(expected_status, timeout=120_000)


def area_rows(page: Any) -> list[list[str]]:
    """The area table as the visitor reads it: one `[class, area (%), pixels]` row per class."""
    rows = page.locator("#areas .virtual-row")
    return [row.locator("[role=gridcell]").all_inner_texts() for row in rows.all()]


def expect_no_result(page: Any) -> None:
    """The page shows no result: no overlay, no legend, no area rows (the status is checked by the caller)."""
    from playwright.sync_api import expect

    expect(page.locator("#overlay img")).to_have_count(0, timeout=30_000)
    expect(page.locator(".fapn-legend")).to_have_count(0)
    expect(page.locator("#areas .virtual-row")).to_have_count(0)


def expect_slider_draws_nothing(page: Any) -> None:
    """Moving the opacity control on a page without a result brings back no earlier overlay."""
    opacity = page.locator("#opacity input[type=number]")  # the number box next to the slider
    opacity.fill(str(round(float(opacity.input_value()) - 0.25, 2)))
    opacity.press("Enter")
    page.wait_for_timeout(1500)  # a redraw, if there were one, comes back well within this
    expect_no_result(page)


def expect_no_toasts_or_error_badges(page: Any) -> None:
    """Failures are said once, in the status: no toast (let alone "Error (3)"), no red badge on the outputs."""
    from playwright.sync_api import expect

    expect(page.locator(".toast-item")).to_have_count(0)
    expect(page.locator(".error:visible")).to_have_count(0)


def write_test_images(folder: Path) -> dict[str, Path]:
    """The files a visitor uploads in `drive_in_browser`."""
    rng = np.random.default_rng(3)
    names = ("upload.png", "second.png", "notes.jpg", "cut.jpg", "scan.tif", "large.png")
    files = {name: folder / name for name in names}
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(files["upload.png"])
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(files["second.png"])
    files["notes.jpg"].write_text("a text file named like a photo")
    full = folder / "full.jpg"
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(full)
    files["cut.jpg"].write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # an interrupted download
    Image.fromarray(rng.integers(0, 255, (40, 72, 3), dtype=np.uint8)).save(files["scan.tif"])
    # 108 megapixels (above PIL's 89-megapixel warning, below its error), in four flat bands: a small PNG.
    large = np.zeros((9000, 12000, 3), np.uint8)
    for band, color in enumerate(((200, 40, 40), (40, 160, 60), (30, 60, 200), (220, 220, 220))):
        large[band * 2250 : (band + 1) * 2250] = color
    Image.fromarray(large).save(files["large.png"], compress_level=1)
    return files


def drive_in_browser(url: str, tmp_path: Path, chromium: str) -> Path:
    """Uses the page as a visitor would, in one session of the Chromium at path `chromium`, and returns a screenshot
    of a result. Checked on the way: the model description; a shipped example; a result (legend, areas with no
    class at 0, the overlay redrawn by the opacity control); a result never shown next to another image (a new
    upload, a failed request, the opacity control after either, a result that arrives after the image changed);
    failures said once in the status in the app's words (a text file, a cut-short JPEG) with no toast and no error
    badge; a TIFF previewed as an image that loads; a 108-megapixel photo described in the app's words."""
    from playwright.sync_api import expect, sync_playwright

    files = write_test_images(tmp_path)
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
        segment_and_wait(page, "256x256 image; 1 view(s)")

        # A new upload, not yet segmented: the example's result goes, and the opacity control does not bring it back.
        upload(page, files["upload.png"])
        expect(status).not_to_contain_text("256x256", timeout=30_000)
        expect_no_result(page)
        expect_slider_draws_nothing(page)

        segment_and_wait(page, "96x64 image; 1 view(s)")
        expect(status).to_contain_text("in all")
        legend = page.locator(".fapn-legend")
        expect(legend).to_be_visible()
        legend_text = legend.inner_text()
        assert any(name in legend_text for name in DEMO_LABELS), legend_text
        expect(page.locator("#areas")).to_contain_text("area (%)")
        rows = area_rows(page)
        assert rows and rows[0][0] == legend_text.split()[0], (rows, legend_text)  # the largest class, first in both
        assert sum(int(row[2]) for row in rows) == 96 * 64 and all(float(row[1]) > 0 for row in rows), rows
        overlay = page.locator("#overlay img")
        before = overlay.get_attribute("src")
        opacity = page.locator("#opacity input[type=number]")
        opacity.fill("1")
        opacity.press("Enter")
        expect(overlay).not_to_have_attribute("src", before, timeout=60_000)  # re-drawn, model not re-run
        screenshot = tmp_path / "space.png"
        page.screenshot(path=str(screenshot), full_page=True)

        # A text file named like a photo, then a cut-short JPEG: each result goes, the status says why, once.
        upload(page, files["notes.jpg"])
        expect_no_result(page)
        segment_and_wait(page, "notes.jpg could not be read: its content is not an image this app can read")
        expect(status).not_to_contain_text("96x64")
        expect_no_result(page)
        expect_slider_draws_nothing(page)
        expect_no_toasts_or_error_badges(page)
        page.screenshot(path=str(tmp_path / "space_error.png"))
        upload(page, files["cut.jpg"])
        segment_and_wait(page, "cut.jpg is cut short (truncated)")
        expect(status).not_to_contain_text("not an image")
        expect(status).not_to_contain_text("notes.jpg")
        expect_no_result(page)
        expect_no_toasts_or_error_badges(page)

        # A TIFF: the input shows a PNG preview that loads; the TIFF itself is segmented.
        upload(page, files["scan.tif"], shown_as="scan-preview.png")
        page.wait_for_function(
            "() => { const i = document.querySelector('#upload img'); return i && i.complete && i.naturalWidth > 0 }",
            timeout=60_000,
        )
        assert page.evaluate("document.querySelector('#upload img').naturalWidth") == 72
        expect(status).to_contain_text("Browsers cannot show TIFF files")
        segment_and_wait(page, "72x40 image; 1 view(s)")

        # 108 megapixels: said in the app's words (PIL's decompression-bomb warning stays in the server log).
        upload(page, files["large.png"])
        segment_and_wait(page, "12000x9000 image (108 megapixels): reduced to 1182x886 (1,047,252 pixels)")
        expect(status).not_to_contain_text("bomb")
        expect(status).not_to_contain_text("Note")
        assert 0 < sum(int(row[2]) for row in area_rows(page)) == 1182 * 886

        # A result that arrives after the visitor changed the image is not shown: the large photo with two views
        # (seconds) is still being segmented when a new image is uploaded and segmented.
        page.evaluate(
            """() => { window.statusLog = [];
                new MutationObserver(() => window.statusLog.push(document.querySelector('#status').innerText))
                    .observe(document.querySelector('#status'), {childList: true, subtree: true, characterData: true});
            }"""
        )
        page.get_by_label("Flip test-time augmentation").check()
        page.get_by_role("button", name="Segment").click()
        upload(page, files["second.png"])
        segment_and_wait(page, "80x48 image; 2 view(s)")
        page.wait_for_timeout(1000)
        log = page.evaluate("window.statusLog")
        # The server log says that the large photo's result was dropped (checked by the caller): the race happened.
        assert not any("12000x9000" in text and "2 view(s)" in text for text in log), log
        expect_no_toasts_or_error_badges(page)
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
    # A CPU Space: PyTorch's CPU-only builds from its own index, no CUDA package, nothing only training needs.
    lines = [line for line in requirements.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert {line.split(";")[0] for line in lines if "+cpu" in line} == {
        f"{name}=={Version(version(name)).public}+cpu" for name in ("torch", "torchvision")
    }
    assert not any(re.search(r"nvidia|cuda|triton|\+cu\d", line.lower()) for line in lines)
    assert not any(line.startswith(("datasets", "accelerate", "matplotlib")) for line in lines)

    # A fresh virtualenv from requirements.txt alone; pip's cache (and the machine's package index) serve it. PyTorch's
    # CPU index cannot be reached from the machines this runs on, so its two lines are installed as the registry's
    # builds of the same versions (the CPU build of 2.13 here has no matching torchvision): the file otherwise as it is.
    installable = tmp_path / "requirements-here.txt"
    installable.write_text(
        "\n".join(
            line.replace("+cpu", "") for line in requirements.splitlines() if not line.startswith("--extra-index")
        )
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-compile", "-r", str(installable)],
        cwd=space, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    print(f"fresh Space virtualenv: {folder_size(venv) / 2**30:.2f} GiB")  # with the registry's (CUDA) torch here
    where = subprocess.run(
        [str(python), "-c", "import fapn_hf; print(fapn_hf.__file__)"],
        cwd=space, env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).resolve() == (space / "fapn_hf" / "__init__.py").resolve()  # not the repo's
    absent = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print([n for n in ('datasets', 'accelerate', 'matplotlib') "
         "if u.find_spec(n)])"],
        cwd=space, env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert absent.stdout.strip() == "[]"  # so the app below runs without the training-only packages

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
        # The large photo's abandoned request ends on its own time: then the server log says its result was dropped.
        dropped = "the result for large.png is not shown: the visitor changed the image meanwhile"
        deadline = time.monotonic() + 180
        while dropped not in log.read_text() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(1)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert screenshot.stat().st_size > 10_000
    # The server log, where a Space owner looks: what is served, PIL's own words, and the result that was dropped.
    server_log = log.read_text()
    assert f"FaPN Space: serving {MODEL_ID} (6 classes)" in server_log
    assert "could be decompression bomb DOS attack" in server_log
    assert dropped in server_log
    assert "Traceback" not in server_log, server_log[-3000:]
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
