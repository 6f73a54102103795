"""FaPN semantic segmentation in the browser: the Gradio app of the Hugging Face Space.

    python app.py                                   # the model named in README.md's front matter (`models:`)
    FAPN_MODEL=ORG/NAME python app.py               # another Hub model (a Space sets FAPN_MODEL in its settings)
    python app.py --model path/to/folder --port 7860

`fapn-build-space` turns this file into a Space folder (app, front matter, examples, requirements, the
package); the model comes from `--model`, else FAPN_MODEL, else the first entry of `models:` in the README.md next to
this file. A model that does not load leaves the page up with a message saying what failed and what to do.

Upload an image and get the class overlay (opacity and "hide background" are controls that do not re-run the
model), a legend in the model's palette, the area of each class and the time the request took. Images are read by
`fapn_hf.decode_image`, the package's one decoding rule (EXIF orientation, 16-bit, transparency over white, first
frame of an animation); images above MAX_PIXELS are reduced right after decoding, so memory stays bounded and the
result is shown at the reduced size. Unreadable uploads fail the request with a message (`gr.Error`), in the page
and for API clients alike.
"""

from __future__ import annotations

import argparse
import html
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
from fapn_hf.hub.cards import describe_architecture, is_synthetic_demo, load_model_card
from fapn_hf.labels import palette
from fapn_hf.tasks.semantic.visualization import overlay

APP_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = APP_DIR / "examples"
MAX_PIXELS = 1024 * 1024  # larger uploads are reduced to this many pixels right after decoding
MULTI_SCALES = (0.75, 1.0, 1.25)
DEFAULT_OPACITY = 0.5
BACKGROUND_NAMES = frozenset({"background"})  # classes the "hide background" switch leaves unpainted
TABLE_HEADERS = ["class", "area (%)", "pixels"]
READABLE_FORMATS = "PNG, JPEG, WebP, GIF, TIFF or BMP"


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
    predictor: SegmentationPredictor | None = None
    error: str | None = None
    synthetic: bool = False  # trained on fapn_hf's synthetic demo shapes (from the model card's tags)
    names: list[str] = field(default_factory=list)

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


def visitor_error(message: str, title: str) -> gr.Error:
    """The error a request fails with: shown in the page until closed, returned to API clients; no traceback."""
    return gr.Error(message, duration=None, title=title, print_exception=False)


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
    """The app's one way to build its predictor from a model id (Hub id or folder); never raises."""
    if model_id is None:
        return Segmenter(None, error=_load_error(None, None))
    try:
        # ONNX Runtime when the model repo ships model.onnx and onnxruntime is installed, PyTorch otherwise.
        predictor = SegmentationPredictor.from_pretrained(model_id, device="cpu", backend="auto")
    except Exception as error:  # any failure becomes a message in the page rather than a dead app
        return Segmenter(model_id, error=_load_error(model_id, error))
    card = load_model_card(model_id)
    names = [predictor.id2label[i] for i in range(len(predictor.id2label))]
    return Segmenter(model_id, predictor, synthetic=card is not None and is_synthetic_demo(card.data), names=names)


def read_upload(path: str | None) -> tuple[np.ndarray, list[str]]:
    """The upload decoded by `decode_image` (RGB uint8) and its notes (e.g. "first frame of an animation").

    Raises `gr.Error` with a message for a missing, empty or unreadable file."""
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
            elif isinstance(cause, (OSError, SyntaxError)):
                reason = f"its content is not an image this app can read ({READABLE_FORMATS})"
            else:
                reason = str(error)
            raise visitor_error(f"{name} could not be read: {reason}.", name) from None
    return image, [str(warning.message) for warning in caught]


def fit_pixels(image: np.ndarray, max_pixels: int) -> np.ndarray:
    """`image` reduced (area-averaging resize) to at most `max_pixels` pixels, keeping its aspect ratio."""
    height, width = image.shape[:2]
    if height * width <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (height * width))
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return np.asarray(PIL.Image.fromarray(image).resize(size, PIL.Image.BILINEAR, reducing_gap=3.0))


@dataclass
class Segmentation:
    """One result kept in the session, so the overlay controls re-draw it without the model."""

    image: np.ndarray  # (H, W, 3) uint8, at the segmented size
    labels: np.ndarray  # (H, W) class ids


def render(
    segmenter: Segmenter, result: Segmentation, opacity: float, hide_background: bool, cache_dir: str
) -> tuple[str, str, list[list[Any]]]:
    """The overlay (a PNG in gradio's cache), the legend (HTML) and the area table of `result`."""
    names, colors = segmenter.names, segmenter.colors
    hidden = segmenter.background_ids if hide_background else []
    painted = np.where(np.isin(result.labels, hidden), 255, result.labels) if hidden else result.labels
    blended = overlay(result.image, painted, colors, alpha=float(opacity))
    path = save_pil_to_cache(PIL.Image.fromarray(blended), cache_dir=cache_dir, format="png")

    ids, counts = np.unique(result.labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    table = [[names[ids[i]], round(100 * counts[i] / result.labels.size, 2), int(counts[i])] for i in order]
    items = []
    for i in order:
        r, g, b = colors[ids[i]].tolist()
        note = " (not painted)" if ids[i] in hidden else ""
        items.append(
            f'<span class="fapn-legend-item"><span class="fapn-swatch" style="background:#{r:02x}{g:02x}{b:02x}">'
            f"</span>{html.escape(names[ids[i]])}{note}</span>"
        )
    legend = f'<div class="fapn-legend">{"".join(items)}</div>'
    return path, legend, table


def segment(
    segmenter: Segmenter,
    image: str | None,
    flip: bool,
    multiscale: bool,
    opacity: float,
    hide_background: bool,
    cache_dir: str,
    max_pixels: int = MAX_PIXELS,
) -> tuple[str, str, list[list[Any]], str, Segmentation]:
    """Segments one upload: `(overlay path, legend HTML, area table, status, result)`.

    Raises `gr.Error` (a message in the page, a failed call for API clients) when there is no model or the upload
    cannot be read. The time in the status covers everything from the upload on disk to the encoded overlay."""
    started = time.perf_counter()
    if segmenter.predictor is None:
        raise visitor_error(segmenter.error, "No model")
    rgb, notes = read_upload(image)
    height, width = rgb.shape[:2]
    rgb = fit_pixels(rgb, max_pixels)
    read = time.perf_counter()
    tta = TTAConfig(scales=MULTI_SCALES if multiscale else (1.0,), flip=flip)
    labels = segmenter.predictor.predict(rgb, tta).astype(np.uint16)
    predicted = time.perf_counter()
    result = Segmentation(rgb, labels)
    overlay_path, legend, table = render(segmenter, result, opacity, hide_background, cache_dir)
    done = time.perf_counter()

    reduced = ""
    if rgb.shape[:2] != (height, width):
        reduced = (
            f", segmented and shown at {rgb.shape[1]}x{rgb.shape[0]} (uploads above {max_pixels:,} pixels are reduced)"
        )
    status = (
        f"{width}x{height} image{reduced}; {tta.num_views} view(s); **{done - started:.2f} s** in all "
        f"(reading {read - started:.2f} s, model {predicted - read:.2f} s, overlay {done - predicted:.2f} s)"
    )
    status += "".join(f"\n\nNote: {note}" for note in notes)
    return overlay_path, legend, table, status, result


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
    if segmenter.synthetic:
        text += (
            "\n\n**Trained on synthetic shapes** (coloured blobs, boxes, shards, dots and wires on textured "
            "backgrounds), not on photos: try the examples; on a photo its output means nothing."
        )
    return text


def image_upload(**kwargs: Any) -> gr.Image:
    """A `gr.Image` that hands the uploaded file to the app as it is: gradio's own check opens it with PIL and
    answers a zero-byte or non-image file with a bare "Error" before the app can say what is wrong.

    The override is set on the instance: a subclass of a gradio component makes gradio write a .pyi stub next to
    this file on import."""
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    check_and_convert = component.preprocess

    def preprocess(payload: Any) -> str | None:
        if payload is None or payload.path is None or (payload.url or "").startswith("data:"):
            return check_and_convert(payload)
        return str(payload.path)

    component.preprocess = preprocess
    return component


CSS = """
.fapn-legend { display: flex; flex-wrap: wrap; gap: 6px 14px; padding: 6px 2px; }
.fapn-legend-item { display: inline-flex; align-items: center; gap: 6px; }
.fapn-swatch { width: 14px; height: 14px; border-radius: 3px; display: inline-block; border: 1px solid #0003; }
"""


def build_app(segmenter: Segmenter) -> gr.Blocks:
    """The page. API: `/segment(image, flip, multiscale, opacity, hide_background)` -> overlay, legend, table,
    status."""
    examples = sorted(str(p) for p in EXAMPLES_DIR.iterdir() if p.is_file()) if EXAMPLES_DIR.is_dir() else []
    has_background = bool(segmenter.background_ids)
    with gr.Blocks(title=f"FaPN semantic segmentation: {segmenter.display_name}", delete_cache=(1800, 3600)) as app:
        gr.Markdown(
            "# FaPN semantic segmentation\n"
            "Feature-aligned Pyramid Network (ICCV 2021): an FPN whose top-down path aligns upsampled features with "
            "a learnt deformable convolution (FAM) and re-weights lateral features (FSM)."
        )
        gr.Markdown(describe_model(segmenter), elem_id="model-description")
        with gr.Row():
            with gr.Column():
                upload = image_upload(label="Image", sources=["upload", "clipboard"], height=360, elem_id="upload")
                flip = gr.Checkbox(label="Flip test-time augmentation", value=False)
                multiscale = gr.Checkbox(label=f"Multi-scale test-time augmentation {MULTI_SCALES}", value=False)
                submit = gr.Button("Segment", variant="primary")
                if examples:
                    gr.Examples(examples=examples, inputs=upload, cache_examples=False, elem_id="examples")
            with gr.Column():
                overlay_image = gr.Image(
                    label="Segmentation",
                    type="filepath",
                    format="png",
                    interactive=False,
                    elem_id="overlay",
                    height=360,
                )
                opacity = gr.Slider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Overlay opacity", elem_id="opacity")
                hide_background = gr.Checkbox(
                    label="Hide background (show the photo where the model sees background)",
                    value=has_background,
                    interactive=has_background,
                    visible=has_background,
                )
                legend = gr.HTML(label="Legend")
                status = gr.Markdown(elem_id="status")
                table = gr.Dataframe(headers=TABLE_HEADERS, label="Area per class", interactive=False, elem_id="areas")
        result = gr.State(None)
        cache_dir = overlay_image.GRADIO_CACHE

        def run(
            image: str | None, flip: bool, multiscale: bool, opacity: float, hide_background: bool
        ) -> tuple[str, str, list[list[Any]], str, Segmentation]:
            return segment(segmenter, image, flip, multiscale, opacity, hide_background, cache_dir)

        def redraw(result: Segmentation | None, opacity: float, hide_background: bool) -> tuple[Any, Any]:
            if result is None:
                return gr.skip(), gr.skip()
            path, legend_html, _ = render(segmenter, result, opacity, hide_background, cache_dir)
            return path, legend_html

        submit.click(
            run,
            inputs=[upload, flip, multiscale, opacity, hide_background],
            outputs=[overlay_image, legend, table, status, result],
            api_name="segment",
        )
        for control in (opacity, hide_background):
            control.change(
                redraw,
                inputs=[result, opacity, hide_background],
                outputs=[overlay_image, legend],
                api_visibility="private",
                trigger_mode="always_last",
            )
    # One inference at a time: concurrent visitors wait in the queue instead of sharing the CPU.
    app.queue(default_concurrency_limit=1, max_size=32)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Hub id or folder (default: FAPN_MODEL, then README's models:)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args()
    app = build_app(load_segmenter(args.model or model_id_from_settings()))
    app.launch(server_name=args.host, server_port=args.port, css=CSS)


if __name__ == "__main__":
    main()
