"""Inference with test-time augmentation and sliding windows, shared by the scripts, the Space and the notebooks.

`SegmentationPredictor.predict_probabilities` averages softmax probabilities over scales and horizontal flips, as
the paper's multi-scale evaluation does; each forward pass may run on overlapping windows for images larger than
`window`. Every view is made by the model's image processor from the decoded image (`decode_image`), and its
logits are resized bilinearly to the image's original resolution, where results are given. With one view the class
map is the argmax of those logits, exactly what `pipeline("image-segmentation")` returns.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .image_processing_fapn import decode_image


@dataclass
class TTAConfig:
    """Test-time augmentation settings.

    Args:
        scales: factors applied to the processor's base size, e.g. `(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)`.
        flip: also predict the horizontally flipped image.
        window: `(height, width)` of sliding windows; inputs larger than this are processed window by window.
        window_overlap: overlap between neighbouring windows, as a fraction of the window (0 <= overlap < 1).
    """

    scales: Sequence[float] = (1.0,)
    flip: bool = False
    window: tuple[int, int] | None = None
    window_overlap: float = 1 / 3

    def __post_init__(self) -> None:
        try:
            scales = tuple(float(s) for s in self.scales)
        except (TypeError, ValueError):
            raise ValueError(f"scales must be numbers, got {self.scales!r}") from None
        if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"scales must be finite and positive, got {scales}")
        self.scales = scales
        if self.window is not None and (
            len(self.window) != 2 or not all(isinstance(side, int) and side >= 1 for side in self.window)
        ):
            raise ValueError(f"window must be (height, width) with positive integer sides, got {self.window}")
        if not 0 <= self.window_overlap < 1:
            raise ValueError(f"window_overlap must lie in [0, 1), got {self.window_overlap}")

    @property
    def num_views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride)) + [size - window]
    return sorted(set(starts))


def sliding_window_logits(
    model: torch.nn.Module, pixel_values: torch.Tensor, window: tuple[int, int], overlap: float = 1 / 3
) -> torch.Tensor:
    """Logits `(N, K, H, W)` of `pixel_values` `(N, 3, H, W)` computed on overlapping windows and averaged where
    they overlap. Images smaller than the window are processed whole."""
    _, _, height, width = pixel_values.shape
    win_h, win_w = min(window[0], height), min(window[1], width)
    stride_h = max(1, int(win_h * (1 - overlap)))
    stride_w = max(1, int(win_w * (1 - overlap)))
    logits = None
    counts = torch.zeros(1, 1, height, width, device=pixel_values.device)
    for top in _window_starts(height, win_h, stride_h):
        for left in _window_starts(width, win_w, stride_w):
            crop = pixel_values[:, :, top : top + win_h, left : left + win_w]
            crop_logits = model(pixel_values=crop).logits
            if logits is None:
                logits = torch.zeros(
                    pixel_values.shape[0], crop_logits.shape[1], height, width, device=crop_logits.device
                )
            logits[:, :, top : top + win_h, left : left + win_w] += crop_logits
            counts[:, :, top : top + win_h, left : left + win_w] += 1
    return logits / counts


def logits_at_size(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    size: tuple[int, int],
    window: tuple[int, int] | None = None,
    window_overlap: float = 1 / 3,
) -> torch.Tensor:
    """The model's float32 logits for `pixel_values` `(N, 3, h, w)`, resized bilinearly (`align_corners=False`, as
    the processor's post-processing) to `size` = (H, W) of the original image or label: `(N, K, H, W)`.

    The one step from processor output to scores that the predictor and the Trainer's evaluation share."""
    if window is not None:
        logits = sliding_window_logits(model, pixel_values, window, window_overlap)
    else:
        logits = model(pixel_values=pixel_values).logits
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)


def parse_scales(text: str) -> tuple[float, ...]:
    """`"0.75,1.0,1.25"` -> `(0.75, 1.0, 1.25)`; raises `ValueError` for anything else (also NaN, inf, <= 0)."""
    try:
        scales = tuple(float(part) for part in text.split(","))
    except ValueError as error:
        raise ValueError(f"expected comma-separated scales such as 0.75,1.0,1.25, got {text!r}") from error
    if not all(math.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"scales must be finite and positive, got {text!r}")
    return scales


def check_model_source(name: str) -> None:
    """Raises `FileNotFoundError` when `name` can be neither a saved model folder nor a Hub model id, with the
    closest existing folder as a hint; a Hub id is left for the loader to find."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model not found: {name} is a folder without config.json (not a saved model)")
        return
    if path.exists():
        raise FileNotFoundError(f"model not found: {name} is a file; a model is a folder (save_pretrained) or Hub id")
    try:
        validate_repo_id(name)
        local_path = name.startswith((".", "/", "~"))
    except HFValidationError:
        local_path = True
    if local_path:
        raise FileNotFoundError(f"model not found: there is no folder {name}{_closest_folder_hint(path)}")


def _closest_folder_hint(path: Path) -> str:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return ""
    folders = [p.name for p in parent.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    match = difflib.get_close_matches(path.name, folders, n=1, cutoff=0.6)
    return f" (did you mean {parent / match[0]}?)" if match else ""


def load_model_and_processor(model_name_or_path: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """A semantic segmentation model (eval mode) and its image processor from a folder or Hub id; a name that is
    neither raises `FileNotFoundError` saying so (not transformers' "Repo id must be in the form ...")."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    check_model_source(model_name_or_path)
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(
            model_name_or_path, trust_remote_code=trust_remote_code
        )
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except OSError as error:
        if Path(model_name_or_path).expanduser().is_dir():
            raise
        raise model_not_found_error(model_name_or_path, error) from error
    return model.eval(), processor


def model_not_found_error(name: str, error: Exception) -> FileNotFoundError:
    """The error for a model name that is no local folder and failed to load as a Hub id (`error`)."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return FileNotFoundError(
        f"model not found: {name} is not a local folder{_closest_folder_hint(Path(name))}, and as a Hub id it "
        f"failed to load ({first_line})"
    )


PREDICTOR_BACKENDS = ("torch", "onnxruntime", "auto")


def find_onnx_file(model_name_or_path: str) -> Path | None:
    """The `model.onnx` of a model folder or Hub repo (downloaded to the Hub cache), or None when there is none."""
    from .onnx import ONNX_FILE_NAME

    folder = Path(model_name_or_path).expanduser()
    if folder.is_dir():
        path = folder / ONNX_FILE_NAME
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        return Path(hf_hub_download(model_name_or_path, ONNX_FILE_NAME))
    except (EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError):
        return None  # the PyTorch loader then says what is missing, in its own words


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)  # transformers models and OnnxRuntimeModel
    return torch.device(device) if device is not None else next(model.parameters()).device


class SegmentationPredictor:
    """Predicts class maps at an image's original resolution, optionally with multi-scale, flip and windows.

    Args:
        model: a FaPN (or any) semantic segmentation model returning `.logits` at input resolution, or an
            `OnnxRuntimeModel` (the exported model run by onnxruntime; see `from_pretrained(backend=...)`).
        image_processor: makes every view's `pixel_values` (its resize rule is the base size of the TTA scales).
    """

    def __init__(self, model: Any, image_processor: Any, device: str | torch.device | None = None):
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.model = model.to(self.device).eval()
        self.processor = image_processor

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        backend: str = "torch",
    ) -> SegmentationPredictor:
        """Loads a model folder or Hub id with its image processor.

        Args:
            backend: `"torch"` (the PyTorch model), `"onnxruntime"` (the folder's `model.onnx`, see
                `fapn_hf.onnx.export_onnx`; CPU tensors in and out) or `"auto"` (onnxruntime when the folder has
                `model.onnx` and onnxruntime is installed, PyTorch otherwise).
        """
        if backend not in PREDICTOR_BACKENDS:
            raise ValueError(f"backend must be one of {PREDICTOR_BACKENDS}, got {backend!r}")
        if backend != "torch":
            check_model_source(model_name_or_path)
            onnx_path = find_onnx_file(model_name_or_path)
            if backend == "onnxruntime" and onnx_path is None:
                raise FileNotFoundError(
                    f"backend='onnxruntime': {model_name_or_path} has no model.onnx; export it with "
                    f"`fapn-export-onnx {model_name_or_path}` (fapn_hf.onnx.export_onnx) or use backend='auto'"
                )
            if onnx_path is not None and (backend == "onnxruntime" or importlib.util.find_spec("onnxruntime")):
                return cls._from_onnx(model_name_or_path, onnx_path, trust_remote_code)
        model, processor = load_model_and_processor(model_name_or_path, trust_remote_code)
        return cls(model, processor, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @classmethod
    def _from_onnx(cls, model_name_or_path: str, onnx_path: Path, trust_remote_code: bool) -> SegmentationPredictor:
        from transformers import AutoConfig, AutoImageProcessor

        from .onnx import OnnxRuntimeModel

        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        return cls(OnnxRuntimeModel(onnx_path, config), processor)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(self.model.config.id2label)

    def pixel_values(self, image: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The processor's `(1, 3, h, w)` input for `image`, at its own size rule or resized to `size` = (h, w)."""
        resize = {} if size is None else {"do_resize": True, "size": {"height": size[0], "width": size[1]}}
        return self.processor(images=image, return_tensors="pt", **resize)["pixel_values"].to(self.device)

    def _view_logits(self, image: Any, tta: TTAConfig) -> Iterator[torch.Tensor]:
        """Logits `(1, K, H, W)` at the original size of every TTA view of `image`."""
        rgb = decode_image(image)
        size = rgb.shape[:2]
        base = self.pixel_values(rgb)
        base_h, base_w = base.shape[-2:]
        for scale in tta.scales:
            if scale == 1.0:
                scaled = base
            else:
                scaled = self.pixel_values(rgb, (max(1, round(base_h * scale)), max(1, round(base_w * scale))))
            for flipped in (False, True) if tta.flip else (False,):
                view = scaled.flip(-1) if flipped else scaled
                logits = logits_at_size(self.model, view, size, tta.window, tta.window_overlap)
                yield logits.flip(-1) if flipped else logits

    @torch.inference_mode()
    def predict_probabilities(self, image: Any, tta: TTAConfig | None = None) -> torch.Tensor:
        """Softmax probabilities `(K, H, W)` at the image's original resolution, averaged over the TTA views."""
        tta = tta or TTAConfig()
        total = None
        for logits in self._view_logits(image, tta):
            probabilities = logits.softmax(dim=1)[0]
            total = probabilities if total is None else total + probabilities
        return total / tta.num_views

    @torch.inference_mode()
    def predict(self, image: Any, tta: TTAConfig | None = None) -> np.ndarray:
        """Class ids `(H, W)` int64 at the image's original resolution: the argmax of the logits for one view, of
        the averaged probabilities for several."""
        tta = tta or TTAConfig()
        if tta.num_views == 1:
            return next(self._view_logits(image, tta))[0].argmax(dim=0).cpu().numpy()
        return self.predict_probabilities(image, tta).argmax(dim=0).cpu().numpy()


__all__ = [
    "PREDICTOR_BACKENDS",
    "SegmentationPredictor",
    "TTAConfig",
    "check_model_source",
    "find_onnx_file",
    "load_model_and_processor",
    "logits_at_size",
    "model_not_found_error",
    "parse_scales",
    "sliding_window_logits",
]
