"""FaPN semantic segmentation in the browser: a Gradio app for a Hugging Face Space.

    python space_app/app.py                          # the model `make demo` writes (outputs/demo)
    FAPN_MODEL=ORG/fapn-r50-cityscapes python space_app/app.py
    python space_app/app.py --model path/to/folder --port 7860

Upload an image (any size, RGB, grayscale, 16-bit or with transparency; phone photos upright by their EXIF tag) and
get the class overlay with a legend in the model's palette, the area of each class and the inference time; flip and
multi-scale test-time augmentation are switches. Large images run at a smaller scale of the model's processor and
the result comes back at the uploaded size.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import PIL.Image

from fapn_hf.image_processing_fapn import decode_image
from fapn_hf.inference import SegmentationPredictor, TTAConfig
from fapn_hf.labels import palette

APP_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = str(APP_DIR.parent / "outputs" / "demo")
EXAMPLES_DIR = APP_DIR / "examples"
MAX_PIXELS = 1024 * 1024  # larger images are processed at a smaller scale
MULTI_SCALES = (0.75, 1.0, 1.25)
TABLE_HEADERS = ["class", "area (%)", "pixels"]


@dataclass
class Segmenter:
    """The loaded model, or why it could not be loaded."""

    predictor: SegmentationPredictor | None
    source: str
    error: str | None = None

    @classmethod
    def load(cls, source: str) -> Segmenter:
        try:
            return cls(SegmentationPredictor.from_pretrained(source, device="cpu", trust_remote_code=True), source)
        except Exception as error:  # any failure becomes a message in the page rather than a dead app
            return cls(None, source, f"{type(error).__name__}: {error}")

    @property
    def label_names(self) -> list[str]:
        if self.predictor is None:
            return []
        return [self.predictor.id2label[i] for i in range(len(self.predictor.id2label))]

    @property
    def color_map(self) -> dict[str, str]:
        names = self.label_names
        colors = palette(len(names), names)
        return {name: f"#{r:02x}{g:02x}{b:02x}" for name, (r, g, b) in zip(names, colors.tolist())}


def _open_image(path: str | None) -> tuple[np.ndarray, list[str]]:
    """The upload decoded as every fapn_hf path decodes images (EXIF orientation, 16-bit, transparency, first frame
    of an animation), and the notes (warnings) that came with it."""
    if path is None:
        raise ValueError("Upload an image first.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = decode_image(path, name=Path(path).name)
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(f"{Path(path).name} is not an image that can be read ({error}).") from error
    return image, [str(warning.message) for warning in caught]


def inference_scale(height: int, width: int, max_pixels: int) -> float:
    """The factor that brings an image of `height x width` down to at most `max_pixels` (1 when it fits)."""
    return min(1.0, math.sqrt(max_pixels / (height * width)))


def segment(
    segmenter: Segmenter, image_path: str | None, flip: bool, multi_scale: bool, max_pixels: int = MAX_PIXELS
) -> tuple[Any, list[list[Any]], str]:
    """Runs the model on one uploaded file.

    Returns the `AnnotatedImage` value `(image, [(mask, label), ...])`, the per-class area table and a status line;
    on failure `(None, [], error message)`. Never raises.
    """
    if segmenter.predictor is None:
        return None, [], f"**No model loaded** from `{segmenter.source}`: {segmenter.error}"
    try:
        image, notes = _open_image(image_path)
    except ValueError as error:
        return None, [], f"**Error:** {error}"
    started = time.perf_counter()
    height, width = image.shape[:2]
    # Large inputs run at a smaller scale of the processor's size; the logits come back at the uploaded size.
    base_height, base_width = segmenter.predictor.pixel_values(image).shape[-2:]
    scale = inference_scale(base_height, base_width, max_pixels)
    scales = MULTI_SCALES if multi_scale else (1.0,)
    tta = TTAConfig(scales=tuple(s * scale for s in scales), flip=flip)
    labels = segmenter.predictor.predict(image, tta)
    elapsed = time.perf_counter() - started

    names = segmenter.label_names
    ids, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts)
    annotations = [((labels == ids[i]).astype(np.float32), names[ids[i]]) for i in order]
    table = [[names[ids[i]], round(100 * counts[i] / labels.size, 2), int(counts[i])] for i in order]
    resized = f", inferred at {round(base_width * scale)}x{round(base_height * scale)}" if scale < 1 else ""
    status = f"{width}x{height} image{resized}; {tta.num_views} view(s); inference {elapsed * 1000:.0f} ms"
    status += "".join(f"\n\nNote: {note}" for note in notes)
    return (PIL.Image.fromarray(image), annotations), table, status


def build_app(segmenter: Segmenter) -> gr.Blocks:
    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))
    with gr.Blocks(title="FaPN semantic segmentation") as app:
        gr.Markdown(
            "# FaPN: Feature-aligned Pyramid Network\n"
            "Semantic segmentation with feature alignment (FAM) and selection (FSM), ICCV 2021. "
            f"Model: `{segmenter.source}`."
        )
        if segmenter.error:
            gr.Markdown(f"**The model could not be loaded** from `{segmenter.source}`: {segmenter.error}")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"])
                flip = gr.Checkbox(label="Flip test-time augmentation", value=False)
                multi_scale = gr.Checkbox(label=f"Multi-scale test-time augmentation {MULTI_SCALES}", value=False)
                submit = gr.Button("Segment", variant="primary")
                if examples:
                    gr.Examples(examples=examples, inputs=image)
            with gr.Column():
                overlay = gr.AnnotatedImage(label="Segmentation", color_map=segmenter.color_map, show_legend=True)
                status = gr.Markdown()
                table = gr.Dataframe(headers=TABLE_HEADERS, label="Area per class", interactive=False)
        submit.click(
            lambda path, f, m: segment(segmenter, path, f, m),
            inputs=[image, flip, multi_scale],
            outputs=[overlay, table, status],
            api_name="segment",
        )
    # One inference at a time: concurrent users wait in the queue instead of sharing the CPU.
    app.queue(default_concurrency_limit=1, max_size=32)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("FAPN_MODEL", DEFAULT_MODEL), help="folder or Hub id")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args()
    build_app(Segmenter.load(args.model)).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
