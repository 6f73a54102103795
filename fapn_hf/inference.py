"""Inference with test-time augmentation and sliding windows, shared by the scripts, the Space and the notebooks.

`SegmentationPredictor.predict_probabilities` averages softmax probabilities over scales and horizontal flips, as
the paper's multi-scale evaluation does; each forward pass may run on overlapping windows for images larger than
`window`. Results are at the image's original resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .image_processing_fapn import as_rgb_tensor, normalize
from .transforms import shortest_edge_size


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
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive, got {tuple(self.scales)}")
        if self.window is not None and (len(self.window) != 2 or min(self.window) < 1):
            raise ValueError(f"window must be (height, width) with positive sides, got {self.window}")
        if not 0 <= self.window_overlap < 1:
            raise ValueError(f"window_overlap must lie in [0, 1), got {self.window_overlap}")


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


def parse_scales(text: str) -> tuple[float, ...]:
    """`"0.75,1.0,1.25"` -> `(0.75, 1.0, 1.25)`; raises `ValueError` for anything else."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as error:
        raise ValueError(f"expected comma-separated scales such as 0.75,1.0,1.25, got {text!r}") from error


class SegmentationPredictor:
    """Predicts class maps at an image's original resolution, optionally with multi-scale, flip and windows.

    Args:
        model: a FaPN (or any) semantic segmentation model returning `.logits` at input resolution.
        image_processor: gives the base size (its resize rule) and the normalisation.
    """

    def __init__(self, model: torch.nn.Module, image_processor: Any, device: str | torch.device | None = None):
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.processor = image_processor
        self.mean, self.std = image_processor.image_mean, image_processor.image_std

    @classmethod
    def from_pretrained(
        cls, model_name_or_path: str, device: str | torch.device | None = None, trust_remote_code: bool = False
    ) -> SegmentationPredictor:
        """Loads a model folder or Hub id with its image processor."""
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        model = AutoModelForSemanticSegmentation.from_pretrained(
            model_name_or_path, trust_remote_code=trust_remote_code
        )
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        return cls(model, processor, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def id2label(self) -> dict[int, str]:
        return dict(self.model.config.id2label)

    def base_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the processor would resize an image of `height x width` to."""
        if not getattr(self.processor, "do_resize", False):
            return height, width
        size = self.processor.size
        shortest = getattr(size, "shortest_edge", None)
        longest = getattr(size, "longest_edge", None)
        if getattr(size, "height", None) and getattr(size, "width", None):
            return size.height, size.width
        if shortest is None:
            return height, width
        return shortest_edge_size(height, width, shortest, longest)

    def to_tensor(self, image: Any) -> torch.Tensor:
        """Any image the processor accepts -> normalised `(1, 3, H, W)` float tensor at its original size.

        Integer images are scaled by 1/255; floating-point ones are taken to be in [0, 1] already.
        """
        return normalize(as_rgb_tensor(image), self.mean, self.std).unsqueeze(0)

    @torch.inference_mode()
    def predict_probabilities(self, image: Any, tta: TTAConfig | None = None) -> torch.Tensor:
        """Softmax probabilities `(K, H, W)` at the image's original resolution, averaged over the TTA views."""
        tta = tta or TTAConfig()
        pixels = self.to_tensor(image).to(self.device)
        height, width = pixels.shape[-2:]
        base_h, base_w = self.base_size(height, width)
        total = None
        for scale in tta.scales:
            size = (max(1, round(base_h * scale)), max(1, round(base_w * scale)))
            scaled = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
            for flipped in (False, True) if tta.flip else (False,):
                view = scaled.flip(-1) if flipped else scaled
                if tta.window is not None:
                    logits = sliding_window_logits(self.model, view, tta.window, tta.window_overlap)
                else:
                    logits = self.model(pixel_values=view).logits
                if flipped:
                    logits = logits.flip(-1)
                logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
                probabilities = logits.softmax(dim=1)[0]
                total = probabilities if total is None else total + probabilities
        return total / (len(tta.scales) * (2 if tta.flip else 1))

    def predict(self, image: Any, tta: TTAConfig | None = None) -> np.ndarray:
        """Class ids `(H, W)` int64 at the image's original resolution."""
        return self.predict_probabilities(image, tta).argmax(dim=0).cpu().numpy()


__all__ = ["SegmentationPredictor", "TTAConfig", "parse_scales", "sliding_window_logits"]
