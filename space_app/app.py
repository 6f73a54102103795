"""FaPN models in the browser: the Gradio app of the Hugging Face Space.

    python app.py                                   # the model named in README.md's front matter (`models:`)
    FAPN_MODEL=ORG/NAME python app.py               # another Hub model (a Space sets FAPN_MODEL in its settings)
    python app.py --model path/to/folder --port 7860

`fapn-build-space` turns this file into a Space folder (app, front matter, examples, requirements, the
package); the model comes from `--model`, else FAPN_MODEL, else the first entry of `models:` in the README.md next to
this file. A model that does not load leaves the page up with a message saying what failed and what to do, and the
server log (where a Space owner looks) says the same with the traceback.

Upload an image and get the class overlay (opacity and "hide background" are controls that do not re-run the
model), a legend in the model's palette, the area of each class and the time the request took. Images are read by
`fapn_hf.decode_image`, the package's one decoding rule (EXIF orientation, 16-bit, transparency over white, first
frame of an animation); images above MAX_PIXELS are reduced right after decoding, so memory stays bounded and the
result is shown at the reduced size. A file browsers cannot display (TIFF) is previewed as a PNG of the decoded
image; the file itself is what gets segmented.

A detector (its family has no per-pixel class scores) gets the same page with other drawings, chosen by the model's
family: Faster / Mask R-CNN draw boxes, masks and "class score" captions above a score-threshold slider and list the
detections (`/detect` for API clients); Panoptic FPN draws its panoptic map with segment names and lists the segments.
The threshold and the opacity re-draw the kept result without the model, like the semantic overlay controls.

What the page shows always belongs to the image in the input: a new upload clears the result, a failed request
clears it and says why once, in the status (no toast, no error badge on every output), and a result that arrives
after the visitor changed the image is dropped. API clients call `/segment`, which fails with the message instead.
"""

from __future__ import annotations

import argparse
import html
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import PIL.Image
from gradio.processing_utils import save_pil_to_cache

from fapn_hf import SegmentationPredictor, TTAConfig, decode_image
from fapn_hf.families import find_family
from fapn_hf.hub.cards import describe_architecture, is_synthetic_demo, load_model_card
from fapn_hf.inference.detection import DetectionPredictor, Detections, load_predictor
from fapn_hf.labels import palette
from fapn_hf.tasks.detection.visualization import draw_detections, draw_panoptic
from fapn_hf.tasks.semantic.visualization import overlay

APP_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = APP_DIR / "examples"
MAX_PIXELS = 1024 * 1024  # larger uploads are reduced to this many pixels right after decoding
MULTI_SCALES = (0.75, 1.0, 1.25)
DEFAULT_OPACITY = 0.5
BACKGROUND_NAMES = frozenset({"background"})  # classes the "hide background" switch leaves unpainted
TABLE_HEADERS = ["class", "area (%)", "pixels"]
TABLE_TYPES = ["str", "number", "number"]  # numbers stay numbers for API clients
AREA_DIGITS = 3  # significant digits of an area: 24 pixels of a megapixel is 0.00229 %, not 0.0 %
READABLE_FORMATS = "PNG, JPEG, WebP, GIF, TIFF or BMP"
# PIL formats an <img> shows in every current browser; the others (TIFF, ...) get a PNG preview in the input.
BROWSER_FORMATS = frozenset({"PNG", "JPEG", "MPO", "GIF", "WEBP", "BMP", "ICO", "AVIF"})
PIL_DIR = Path(PIL.__file__).resolve().parent
ERROR_MARK = "⚠️"  # starts a status that says why nothing was segmented
# What the page draws, by the model's family: class per pixel, boxes (and masks), or a panoptic map.
SEMANTIC, DETECTION, PANOPTIC = "semantic", "detection", "panoptic"
TITLES = {
    SEMANTIC: "FaPN semantic segmentation",
    DETECTION: "FaPN object detection",
    PANOPTIC: "FaPN panoptic segmentation",
}
DEFAULT_THRESHOLD = 0.5  # detections scoring below it are not drawn (the slider's start)
DETECTION_HEADERS = ["class", "score", "x0", "y0", "x1", "y1"]  # a box in the (reduced) image's pixels
DETECTION_TYPES = ["str", "number", "number", "number", "number", "number"]
PANOPTIC_HEADERS = ["segment", "class", "score", "area (%)", "pixels"]
PANOPTIC_TYPES = ["number", "str", "number", "number", "number"]

logger = logging.getLogger("fapn_space")


def model_id_from_settings(app_dir: Path = APP_DIR) -> str | None:
    """The model to serve: FAPN_MODEL, else the first of `models:` in the front matter of `app_dir`/README.md."""
    from huggingface_hub import metadata_load

    if os.environ.get("FAPN_MODEL"):
        return os.environ["FAPN_MODEL"]
    readme = app_dir / "README.md"
    models = (metadata_load(readme) or {}).get("models") if readme.is_file() else None
    return models[0] if models else None


@dataclass
class Segmenter:
    """The served model (or why there is none) and what the page says about it."""

    model_id: str | None
    predictor: SegmentationPredictor | DetectionPredictor | None = None
    error: str | None = None
    synthetic: bool = False  # trained on fapn_hf's synthetic demo shapes (from the model card's tags)
    names: list[str] = field(default_factory=list)
    kind: str = SEMANTIC  # SEMANTIC, DETECTION or PANOPTIC: what the page draws (`kind_of`)

    @property
    def display_name(self) -> str:
        """The model as visitors know it: its Hub id, or a local folder's name (never a server path)."""
        if self.model_id is None:
            return "no model"
        return f"local folder {Path(self.model_id).name}" if Path(self.model_id).is_dir() else self.model_id

    @property
    def colors(self) -> np.ndarray:
        return palette(len(self.names), self.names)

    @property
    def background_ids(self) -> list[int]:
        return [i for i, name in enumerate(self.names) if name.lower() in BACKGROUND_NAMES]


def kind_of(predictor: SegmentationPredictor | DetectionPredictor) -> str:
    """What the page draws for `predictor`'s model, by its family: a family with per-pixel class scores is SEMANTIC;
    a detector is PANOPTIC when its predictor makes a panoptic map, else DETECTION."""
    family = find_family(predictor.model.config)
    if family is None or family.predicts_pixel_classes:
        return SEMANTIC
    return PANOPTIC if predictor.is_panoptic else DETECTION


def visitor_error(message: str, title: str) -> gr.Error:
    """The error a request fails with: its message (in the app's words, no traceback) reaches API clients; the page
    shows it in the status instead (`page_segment`)."""
    return gr.Error(message, title=title, print_exception=False)


def _load_error(model_id: str | None, error: Exception | None) -> str:
    if model_id is None:
        return (
            "No model is configured. Set the FAPN_MODEL variable in the Space settings to a model repo id "
            "(ORG/NAME), or list the model under `models:` in the Space's README.md."
        )
    reason = str(error).strip().splitlines()[0] if error is not None and str(error).strip() else type(error).__name__
    return (
        f"The model {model_id} could not be loaded: {reason}. Check that the id is right (FAPN_MODEL in the Space "
        "settings, or `models:` in README.md) and that the repository holds config.json, model.safetensors and "
        "preprocessor_config.json; for a private or gated model, add an HF_TOKEN secret with read access to this "
        "Space. Then restart the Space."
    )


def load_segmenter(model_id: str | None) -> Segmenter:
    """The app's one way to build its predictor from a model id (Hub id or folder); never raises.

    A failure becomes the page's message and an error in the server log (with the traceback, for the owner)."""
    if model_id is None:
        segmenter = Segmenter(None, error=_load_error(None, None))
        logger.error(segmenter.error)
        return segmenter
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU Space uses its GPU
    try:
        # The predictor the model's family calls for. A semantic model runs on ONNX Runtime when the model repo
        # ships model.onnx and onnxruntime is installed, on PyTorch otherwise; a detector runs on PyTorch.
        predictor = load_predictor(model_id, device=device, backend="auto")
    except Exception as error:  # any failure becomes a message in the page rather than a dead app
        segmenter = Segmenter(model_id, error=_load_error(model_id, error))
        logger.error(segmenter.error, exc_info=error)
        return segmenter
    card = load_model_card(model_id)
    names = [predictor.id2label[i] for i in range(len(predictor.id2label))]
    synthetic = card is not None and is_synthetic_demo(card.data)
    return Segmenter(model_id, predictor, synthetic=synthetic, names=names, kind=kind_of(predictor))


def _is_truncation(error: BaseException | None) -> bool:
    # PIL says "image file is truncated (N bytes not processed)" when the data ends before the image does.
    return isinstance(error, OSError) and "truncated" in str(error).lower()


def _notes(caught: list[warnings.WarningMessage]) -> list[str]:
    """The decoding warnings a visitor should read (the package's own, e.g. "first frame of an animation").

    PIL's warnings are its own words for the server log, never the page: the decompression-bomb warning of a large
    photo is said by the status in the app's words ("reduced to N pixels"), the others are details of a file."""
    notes = []
    for caught_warning in caught:
        if Path(caught_warning.filename).resolve().is_relative_to(PIL_DIR):
            logger.info("PIL: %s", caught_warning.message)
        else:
            notes.append(str(caught_warning.message))
    return notes


def read_upload(path: str | None) -> tuple[np.ndarray, list[str]]:
    """The upload decoded by `decode_image` (RGB uint8) and its notes (e.g. "first frame of an animation").

    Raises `gr.Error` with a message for a missing, empty, cut-short or unreadable file."""
    if path is None:
        raise visitor_error(f"Upload an image first ({READABLE_FORMATS}).", "No image")
    name = Path(path).name
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise visitor_error(f"{name} is empty (0 bytes): it holds no image. Upload it again, or another file.", name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = decode_image(path, name=name)
        except (ValueError, FileNotFoundError) as error:
            cause = error.__cause__
            if isinstance(cause, PIL.Image.DecompressionBombError):
                reason = f"it has more pixels than this app reads ({2 * PIL.Image.MAX_IMAGE_PIXELS:,} at most)"
            elif _is_truncation(cause):
                raise visitor_error(
                    f"{name} is cut short (truncated): the file ends before its image does, as after an interrupted "
                    "download or copy, so the browser may show only part of it. Upload the complete file.",
                    name,
                ) from None
            elif isinstance(cause, (OSError, SyntaxError)):
                reason = f"its content is not an image this app can read ({READABLE_FORMATS})"
            else:
                reason = str(error)
            raise visitor_error(f"{name} could not be read: {reason}.", name) from None
    return image, _notes(caught)


def fit_pixels(image: np.ndarray, max_pixels: int) -> np.ndarray:
    """`image` reduced (area-averaging resize) to at most `max_pixels` pixels, keeping its aspect ratio."""
    height, width = image.shape[:2]
    if height * width <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (height * width))
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return np.asarray(PIL.Image.fromarray(image).resize(size, PIL.Image.BILINEAR, reducing_gap=3.0))


def area_percent(pixels: int, total: int, digits: int = AREA_DIGITS) -> float:
    """`pixels` of `total` in percent, to `digits` significant digits (never 0 for a class that has pixels)."""
    return float(f"{100 * pixels / total:.{digits}g}")


@dataclass
class Segmentation:
    """One result kept in the session, so the overlay controls re-draw it without the model."""

    image: np.ndarray  # (H, W, 3) uint8, at the segmented size
    labels: np.ndarray  # (H, W) class ids


@dataclass
class Detected:
    """A detector's result kept in the session: every detection, so the threshold re-draws it without the model."""

    image: np.ndarray  # (H, W, 3) uint8, at the size the detector was given
    found: Detections  # at that size


def _legend(items: list[tuple[str, np.ndarray, str]]) -> str:
    """The legend's HTML: a colour swatch and `name` + `note` per `(name, colour, note)` item."""
    spans = []
    for name, color, note in items:
        r, g, b = (int(c) for c in color)
        spans.append(
            f'<span class="fapn-legend-item"><span class="fapn-swatch" style="background:#{r:02x}{g:02x}{b:02x}">'
            f"</span>{html.escape(name)}{note}</span>"
        )
    return f'<div class="fapn-legend">{"".join(spans)}</div>'


def render_detections(
    segmenter: Segmenter, result: Detected, threshold: float, opacity: float
) -> tuple[PIL.Image.Image, str, list[list[Any]]]:
    """A detector's drawing, legend and table of `result`.

    Boxes and masks: the detections scoring at least `threshold` drawn by `draw_detections` (masks at `opacity`), a
    legend of their classes with counts, and the table `[class, score, x0, y0, x1, y1]` (decreasing score).
    Panoptic: the map drawn by `draw_panoptic` (at `opacity`; the threshold plays no part, the map has its own
    combination settings), a legend of its classes, and `[segment, class, score, area %, pixels]` per segment."""
    names, colors, found = segmenter.names, segmenter.colors, result.found
    if found.panoptic is not None:
        segmentation, segments = found.panoptic
        drawing = draw_panoptic(result.image, segmentation, segments, names, colors, alpha=float(opacity))
        ids, counts = np.unique(segmentation, return_counts=True)
        pixels = dict(zip(ids.tolist(), counts.tolist()))
        shown = [segment for segment in segments if pixels.get(segment["id"], 0)]
        table = [
            [
                int(segment["id"]),
                names[segment["label_id"]],
                None if segment.get("score") is None else round(float(segment["score"]), 3),
                area_percent(pixels[segment["id"]], segmentation.size),
                pixels[segment["id"]],
            ]
            for segment in shown
        ]
        labels = [int(segment["label_id"]) for segment in shown]
    else:
        drawing = draw_detections(
            result.image, found.boxes, found.labels, found.scores, names, colors, found.masks, threshold, float(opacity)
        )
        # The same comparison as draw_detections (float64), so the table lists exactly what is drawn.
        kept = np.nonzero(found.scores.astype(np.float64) >= threshold)[0]
        table = [
            [names[found.labels[i]], round(float(found.scores[i]), 3), *(round(float(v), 1) for v in found.boxes[i])]
            for i in kept
        ]
        labels = found.labels[kept].tolist()
    present, counts = np.unique(labels, return_counts=True) if labels else ([], [])
    legend = _legend([(names[i], colors[i], f" ×{n}") for i, n in zip(present, counts)])
    return drawing, legend, table


def render(
    segmenter: Segmenter,
    result: Segmentation | Detected,
    opacity: float,
    hide_background: bool,
    cache_dir: str,
    threshold: float = DEFAULT_THRESHOLD,
) -> tuple[str, str, list[list[Any]]]:
    """The overlay (a PNG in gradio's cache), the legend (HTML) and the area table `[class, area %, pixels]`
    (largest first) of `result`; for a detector's result, its drawing, legend and table (`render_detections`, which
    takes `threshold`; `hide_background` is the semantic page's alone)."""
    if isinstance(result, Detected):
        drawing, legend, table = render_detections(segmenter, result, threshold, opacity)
        return save_pil_to_cache(drawing, cache_dir=cache_dir, format="png"), legend, table
    names, colors = segmenter.names, segmenter.colors
    hidden = segmenter.background_ids if hide_background else []
    painted = np.where(np.isin(result.labels, hidden), 255, result.labels) if hidden else result.labels
    blended = overlay(result.image, painted, colors, alpha=float(opacity))
    path = save_pil_to_cache(PIL.Image.fromarray(blended), cache_dir=cache_dir, format="png")

    ids, counts = np.unique(result.labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    table = [[names[ids[i]], area_percent(int(counts[i]), result.labels.size), int(counts[i])] for i in order]
    legend = _legend([(names[ids[i]], colors[ids[i]], " (not painted)" if ids[i] in hidden else "") for i in order])
    return path, legend, table


def describe_size(height: int, width: int, shown: tuple[int, int]) -> str:
    """The status's words for the image size: `96x64 image`, or for an image reduced to `shown` (H, W)
    `12000x9000 image (108 megapixels): reduced to 1182x886 (1,047,252 pixels) for segmentation`."""
    if shown == (height, width):
        return f"{width}x{height} image"
    return (
        f"{width}x{height} image ({height * width / 1e6:.3g} megapixels): reduced to {shown[1]}x{shown[0]} "
        f"({shown[0] * shown[1]:,} pixels) for segmentation"
    )


def segment(
    segmenter: Segmenter,
    image: str | None,
    flip: bool,
    multiscale: bool,
    opacity: float,
    hide_background: bool,
    cache_dir: str,
    max_pixels: int = MAX_PIXELS,
    threshold: float = DEFAULT_THRESHOLD,
) -> tuple[str, str, list[list[Any]], str, Segmentation | Detected]:
    """Segments one upload: `(overlay path, legend HTML, area table, status, result)`; for a detector, `(drawing
    path, legend, detections or segments table, status, result)` with the detections scoring at least `threshold`
    drawn (the semantic controls `hide_background` and test-time augmentation are not a detector's).

    Raises `gr.Error` (a failed call for API clients, the status for the page) when there is no model or the upload
    cannot be read. The time in the status covers everything from the upload on disk to the encoded overlay."""
    started = time.perf_counter()
    if segmenter.predictor is None:
        raise visitor_error(segmenter.error, "No model")
    tta = TTAConfig(scales=MULTI_SCALES if multiscale else (1.0,), flip=flip)
    if segmenter.kind != SEMANTIC and tta.num_views > 1:
        raise visitor_error(
            f"{segmenter.display_name} is a detector: flip and multi-scale test-time augmentation are for semantic "
            "segmentation models.",
            "No test-time augmentation",
        )
    rgb, notes = read_upload(image)
    height, width = rgb.shape[:2]
    rgb = fit_pixels(rgb, max_pixels)
    read = time.perf_counter()
    if segmenter.kind == SEMANTIC:
        result = Segmentation(rgb, segmenter.predictor.predict(rgb, tta).astype(np.uint16))
    else:
        result = Detected(rgb, segmenter.predictor.predict(rgb))
    predicted = time.perf_counter()
    overlay_path, legend, table = render(segmenter, result, opacity, hide_background, cache_dir, threshold)
    done = time.perf_counter()

    status = (
        f"{describe_size(height, width, rgb.shape[:2])}; {tta.num_views} view(s); **{done - started:.2f} s** in all "
        f"(reading {read - started:.2f} s, model {predicted - read:.2f} s, overlay {done - predicted:.2f} s)"
    )
    status += "".join(f"\n\nNote: {note}" for note in notes)
    return overlay_path, legend, table, status, result


@dataclass
class PageState:
    """What one visitor's page shows, kept by gradio for the session (`gr.State`).

    Gradio hands every event of the session this same object (a State input is not copied), so an upload that
    `new_image` records while a segmentation runs is seen by that segmentation when it ends, and its result is
    dropped instead of being shown next to the new image."""

    shown: str | None = None  # the uploaded file the input shows (for a PNG preview: the file behind it)
    preview: str | None = None  # the PNG preview the input shows for a format browsers cannot display
    result: Segmentation | Detected | None = None  # the result on the page, for the overlay controls; of `shown`

    def file_of(self, image: str | None) -> str | None:
        """The uploaded file behind the input's value `image` (the preview's source, or `image` itself)."""
        return self.shown if image is not None and _same(image, self.preview) else image


def _same(a: str | None, b: str | None) -> bool:
    """Whether two values of the input name the same file (gradio may hand the same file under another spelling);
    no file is the same as no file."""
    if a is None or b is None:
        return a is b
    return Path(a).resolve() == Path(b).resolve()


def browser_preview(path: str, cache_dir: str, max_pixels: int = MAX_PIXELS) -> tuple[str, str] | None:
    """`(PNG path in gradio's cache, PIL format)`: `path` decoded as it is segmented, for a format browsers cannot
    display (TIFF); None for the formats they show, and for files that cannot be read (Segment says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a large image's decompression-bomb warning: not news here
            with PIL.Image.open(path) as opened:
                if opened.format in BROWSER_FORMATS:
                    return None
                kind = opened.format
        rgb, _ = read_upload(path)
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError, gr.Error):
        return None
    preview = PIL.Image.fromarray(fit_pixels(rgb, max_pixels))
    return save_pil_to_cache(preview, cache_dir=cache_dir, name=f"{Path(path).stem}-preview", format="png"), kind


def cleared(status: str = "") -> tuple[None, str, list[list[Any]], str]:
    """The outputs of a page that shows no result: `(overlay, legend, table, status)`."""
    return None, "", [], status


def failure_status(message: str) -> str:
    return f"{ERROR_MARK} **Not segmented.** {message}"


def new_image(page: PageState, image: str | None, cache_dir: str) -> tuple[Any, ...]:
    """The input changed (upload, example, clear, or this app's preview): `(overlay, legend, table, status, input)`.

    A new file clears the result (it belonged to the previous image) and, for a format browsers cannot display, puts
    a PNG preview into the input; the preview coming back as the input's value, or the file already shown, keeps
    the page as it is."""
    if image is not None and _same(image, page.preview):
        return (gr.skip(),) * 5
    fresh = image is None or not _same(image, page.shown)
    if fresh:
        page.shown, page.preview, page.result = image, None, None
    note, input_value = "", gr.skip()
    if image is not None and page.preview is None:
        preview = browser_preview(image, cache_dir)
        if preview is not None:
            input_value, kind = preview
            page.preview = input_value
            note = f"Browsers cannot show {kind} files: the input shows a PNG preview; Segment reads the file itself."
    return (*cleared(note), input_value) if fresh else (*(gr.skip(),) * 4, input_value)


def page_segment(
    segmenter: Segmenter,
    page: PageState,
    image: str | None,
    flip: bool,
    multiscale: bool,
    opacity: float,
    hide_background: bool,
    cache_dir: str,
    threshold: float = DEFAULT_THRESHOLD,
) -> tuple[Any, ...]:
    """The Segment button: `(overlay, legend, table, status)`; never raises. (`threshold`: a detector's.)

    A failure clears the outputs and says why in the status, once; an unexpected error is logged with its traceback
    and the page says so in a sentence. A result for an image the visitor replaced meanwhile is not shown: the
    request still runs (a queued request is not cancelled, as a cancel sent with the new upload could also catch the
    click that follows it), and `new_image` has already cleared the page."""
    file = page.file_of(image)
    try:
        overlay_path, legend, table, status, result = segment(
            segmenter, file, flip, multiscale, opacity, hide_background, cache_dir, threshold=threshold
        )
    except gr.Error as error:
        outputs, result = cleared(failure_status(error.message)), None
    except Exception:
        logger.exception("segmenting %s failed", file)
        outputs, result = cleared(failure_status("Something went wrong on the server; try again.")), None
    else:
        outputs = overlay_path, legend, table, status
    if not _same(file, page.shown):  # a new image arrived meanwhile (or `new_image` has not seen this one yet)
        logger.info("the result for %s is not shown: the visitor changed the image meanwhile", Path(file or "").name)
        return (gr.skip(),) * 4
    page.result = result
    return outputs


def redraw(
    segmenter: Segmenter,
    page: PageState,
    opacity: float,
    hide_background: bool,
    cache_dir: str,
    threshold: float = DEFAULT_THRESHOLD,
) -> tuple[Any, ...]:
    """The overlay controls: the kept result re-drawn `(overlay, legend)`; nothing when the page shows no result.

    For boxes (DETECTION) the threshold also changes the list: `(drawing, legend, table)`."""
    outputs = 3 if segmenter.kind == DETECTION else 2
    result = page.result
    if result is None:
        return (gr.skip(),) * outputs
    drawn = render(segmenter, result, opacity, hide_background, cache_dir, threshold)
    if page.result is not result:  # the image changed while drawing
        return (gr.skip(),) * outputs
    return drawn[:outputs]


def api_segment(
    segmenter: Segmenter,
    image: str | None,
    flip: bool,
    multiscale: bool,
    opacity: float,
    hide_background: bool,
    cache_dir: str,
    threshold: float = DEFAULT_THRESHOLD,
) -> tuple[str, str, list[list[Any]], str]:
    """`/segment` for API clients: `(overlay, legend, areas, status)` (a detector's `/detect`: `(drawing, legend,
    detections, status)`); a request that cannot be served fails with the message (`gr.Error`), an unexpected error
    with a sentence (its traceback goes to the server log)."""
    try:
        return segment(segmenter, image, flip, multiscale, opacity, hide_background, cache_dir, threshold=threshold)[:4]
    except gr.Error:
        raise
    except Exception:
        logger.exception("segmenting %s failed", image)
        raise visitor_error("Something went wrong on the server; try again.", "Server error") from None


def describe_model(segmenter: Segmenter) -> str:
    """The page's paragraph about the model: its id, architecture, classes and training data."""
    if segmenter.predictor is None:
        return f"**The model could not be loaded.** {segmenter.error}"
    model_id = segmenter.display_name
    link = model_id if Path(str(segmenter.model_id)).is_dir() else f"[{model_id}](https://huggingface.co/{model_id})"
    classes = ", ".join(segmenter.names)
    text = (
        f"Model: **{link}**, {describe_architecture(segmenter.predictor.model.config)}.\n\n"
        f"It recognises {len(segmenter.names)} classes: {classes}."
    )
    if segmenter.kind == DETECTION:
        text += " The drawing shows the detections that score at least the threshold; the table lists them."
    elif segmenter.kind == PANOPTIC:
        text += " The drawing shows its panoptic map (each segment in its class colour, with its name)."
    if segmenter.synthetic:
        text += (
            "\n\n**Trained on synthetic shapes** (coloured blobs, boxes, shards, dots and wires on textured "
            "backgrounds), not on photos: try the examples; on a photo its output means nothing."
        )
    return text


RAW_UPLOAD = "fapn-raw-upload"  # the elem_classes mark of the upload box: gradio hands it the file as it is


def _pass_files_as_they_are(preprocess: Any) -> Any:
    """gradio's `Image.preprocess` made to hand a marked box's uploaded file to the app as it is: gradio's own check
    opens it with PIL and answers a zero-byte, cut-short or non-image file with a bare "Error" (and a badge) before the
    app can say what is wrong.

    The class is patched, not the instance: an event that updates the box (an example click, a preview) makes gradio
    rebuild it for that session from its constructor arguments, which keep the mark but not an instance attribute; a
    subclass would make gradio write a .pyi stub next to this file. Other `gr.Image`s are left as gradio has them."""

    def preprocess_marked(self: gr.Image, payload: Any) -> Any:
        marked = RAW_UPLOAD in (self.elem_classes or [])
        if marked and payload is not None and payload.path is not None and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return preprocess(self, payload)

    preprocess_marked.passes_files_as_they_are = True
    return preprocess_marked


if not getattr(gr.Image.preprocess, "passes_files_as_they_are", False):  # once, even when this file is loaded twice
    gr.Image.preprocess = _pass_files_as_they_are(gr.Image.preprocess)


def image_upload(**kwargs: Any) -> gr.Image:
    """The upload box: a `gr.Image` whose file reaches the app as it is (`type="filepath"`, no mode conversion, and
    no check by gradio, see `_pass_files_as_they_are`)."""
    return gr.Image(type="filepath", image_mode=None, elem_classes=[RAW_UPLOAD], **kwargs)


CSS = """
.fapn-legend { display: flex; flex-wrap: wrap; gap: 6px 14px; padding: 6px 2px; }
.fapn-legend-item { display: inline-flex; align-items: center; gap: 6px; }
.fapn-swatch { width: 14px; height: 14px; border-radius: 3px; display: inline-block; border: 1px solid #0003; }
"""


def build_app(segmenter: Segmenter) -> gr.Blocks:
    """The page. API: `/segment(image, flip, multiscale, opacity, hide_background)` -> `(overlay, legend, areas,
    status)`; for boxes (DETECTION) `/detect(image, threshold, opacity)` -> `(drawing, legend, detections, status)`;
    for a panoptic map `/segment(image, opacity)` -> `(drawing, legend, segments, status)`."""
    examples = sorted(str(p) for p in EXAMPLES_DIR.iterdir() if p.is_file()) if EXAMPLES_DIR.is_dir() else []
    kind = segmenter.kind
    has_background = bool(segmenter.background_ids)
    headers, types = {
        SEMANTIC: (TABLE_HEADERS, TABLE_TYPES),
        DETECTION: (DETECTION_HEADERS, DETECTION_TYPES),
        PANOPTIC: (PANOPTIC_HEADERS, PANOPTIC_TYPES),
    }[kind]
    with gr.Blocks(title=f"{TITLES[kind]}: {segmenter.display_name}", delete_cache=(1800, 3600)) as app:
        gr.Markdown(
            f"# {TITLES[kind]}\n"
            "Feature-aligned Pyramid Network (ICCV 2021): an FPN whose top-down path aligns upsampled features with "
            "a learnt deformable convolution (FAM) and re-weights lateral features (FSM)."
        )
        gr.Markdown(describe_model(segmenter), elem_id="model-description")
        semantic = kind == SEMANTIC
        with gr.Row():
            with gr.Column():
                upload = image_upload(label="Image", sources=["upload", "clipboard"], height=360, elem_id="upload")
                # Test-time augmentation is the semantic predictor's; a detector's page has no such switches.
                flip = gr.Checkbox(label="Flip test-time augmentation", value=False, visible=semantic)
                multiscale = gr.Checkbox(
                    label=f"Multi-scale test-time augmentation {MULTI_SCALES}", value=False, visible=semantic
                )
                submit = gr.Button("Segment" if kind != DETECTION else "Detect", variant="primary")
                if examples:
                    gr.Examples(examples=examples, inputs=upload, cache_examples=False, elem_id="examples")
            with gr.Column():
                overlay_image = gr.Image(
                    label="Overlay", type="filepath", format="png", interactive=False, elem_id="overlay", height=360
                )
                threshold = gr.Slider(
                    0, 1, value=DEFAULT_THRESHOLD, step=0.05, label="Score threshold", elem_id="threshold",
                    visible=kind == DETECTION,
                )  # fmt: skip
                opacity = gr.Slider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Overlay opacity", elem_id="opacity")
                hide_background = gr.Checkbox(
                    label="Hide background (show the photo where the model sees background)",
                    value=semantic and has_background,
                    interactive=semantic and has_background,
                    visible=semantic and has_background,
                )
                legend = gr.HTML(label="Legend")
                status = gr.Markdown(label="Status", elem_id="status")  # the label names the API's output
                table = gr.Dataframe(
                    headers=headers,
                    datatype=types,
                    label={SEMANTIC: "Areas", DETECTION: "Detections", PANOPTIC: "Segments"}[kind],
                    interactive=False,
                    elem_id="areas",
                )
        page = gr.State(PageState())  # each session gets its own copy
        api_trigger = gr.Button(visible=False)  # the API's endpoint: the page uses `page_segment`
        cache_dir = overlay_image.GRADIO_CACHE
        outputs = [overlay_image, legend, table, status]

        def on_segment(
            page: PageState,
            image: str | None,
            flip: bool,
            multiscale: bool,
            opacity: float,
            hide: bool,
            threshold: float,
        ) -> tuple[Any, ...]:
            return page_segment(segmenter, page, image, flip, multiscale, opacity, hide, cache_dir, threshold)

        # The API's parameters are the endpoint function's: each kind gets the controls its page shows.
        if kind == SEMANTIC:

            def on_api(
                image: str | None, flip: bool, multiscale: bool, opacity: float, hide_background: bool
            ) -> tuple[str, str, list[list[Any]], str]:
                return api_segment(segmenter, image, flip, multiscale, opacity, hide_background, cache_dir)

            api_name, api_controls = "segment", [upload, flip, multiscale, opacity, hide_background]
        elif kind == DETECTION:

            def on_api(image: str | None, threshold: float, opacity: float) -> tuple[str, str, list[list[Any]], str]:
                return api_segment(segmenter, image, False, False, opacity, False, cache_dir, threshold)

            api_name, api_controls = "detect", [upload, threshold, opacity]
        else:

            def on_api(image: str | None, opacity: float) -> tuple[str, str, list[list[Any]], str]:
                return api_segment(segmenter, image, False, False, opacity, False, cache_dir)

            api_name, api_controls = "segment", [upload, opacity]

        controls = [upload, flip, multiscale, opacity, hide_background, threshold]
        # One inference at a time, page and API together: visitors wait in the queue instead of sharing the CPU.
        # A click while a request is running (e.g. for the previous image) runs once that one ends: gradio's default
        # for clicks would drop it.
        submit.click(
            on_segment,
            [page, *controls],
            outputs,
            api_visibility="private",
            concurrency_id="model",
            trigger_mode="always_last",
        )
        api_trigger.click(on_api, api_controls, outputs, api_name=api_name, concurrency_id="model")
        upload.change(
            lambda page, image: new_image(page, image, cache_dir),
            [page, upload],
            [*outputs, upload],
            api_visibility="private",
            show_progress="hidden",
        )
        # The drawing controls re-draw the kept result; the threshold also changes the list of detections.
        redrawn = [overlay_image, legend, table] if kind == DETECTION else [overlay_image, legend]
        for control in (opacity, hide_background, threshold):
            control.change(
                lambda page, opacity, hide, threshold: redraw(segmenter, page, opacity, hide, cache_dir, threshold),
                [page, opacity, hide_background, threshold],
                redrawn,
                api_visibility="private",
                trigger_mode="always_last",
                show_progress="hidden",
            )
    app.queue(default_concurrency_limit=1, max_size=32)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Hub id or folder (default: FAPN_MODEL, then README's models:)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args()
    # The server log is where a Space owner looks: errors (a model that does not load) and PIL's notes go there.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # other libraries: warnings up
    logger.setLevel(logging.INFO)
    segmenter = load_segmenter(args.model or model_id_from_settings())
    if segmenter.predictor is None:
        print(f"FaPN Space: serving no model. {segmenter.error}", flush=True)
    else:
        print(f"FaPN Space: serving {segmenter.display_name} ({len(segmenter.names)} classes)", flush=True)
    build_app(segmenter).launch(server_name=args.host, server_port=args.port, css=CSS)


if __name__ == "__main__":
    main()
