"""Inference with test-time augmentation and sliding windows, shared by the scripts, the Space and the notebooks.

Two model families, one path:

- FaPN semantic models (`outputs.logits` `(N, num_labels, h, w)` at input resolution): a view's scores are its logits
  resized bilinearly to the image's original resolution; TTA averages their softmax probabilities over scales and
  horizontal flips, as the paper's multi-scale evaluation does.
- MaskFormer + FaPN (mask classification: `class_queries_logits`, `masks_queries_logits`): a view's scores are the
  original MaskFormer's semantic inference (`mask_classification_scores`: masks upsampled to the padded input,
  cropped to the image, `einsum("qc,qhw->chw", softmax(class)[..., :-1], sigmoid(masks))`), resized to the original
  resolution; TTA averages these scores with no further softmax, as the original `SemanticSegmentorWithTTA`.

Views are the processor's own resize times `scales`, or the original MaskFormer's shortest-edge sizes
(`TTAConfig(short_sides=..., max_size=...)`, `TTAConfig.maskformer_multi_scale()`), each optionally flipped; each
forward pass may run on overlapping windows for inputs larger than `window`. Every view is made by the model's
image processor from the decoded image (`decode_image`). With one view the class map is the argmax of that view's
scores, exactly what `pipeline("image-segmentation")` returns.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..families import find_family
from ..modeling.image_decoding import decode_image
from .sources import check_model_source, find_onnx_file, load_model_and_processor
from .threads import cpu_thread_governor

# The original MaskFormer + FaPN multi-scale test (FaPN-full's ADE20K Swin-L and COCO-Stuff-10K configs, TEST.AUG):
# ResizeShortestEdge to each of MIN_SIZES with the longer side capped at MAX_SIZE, each view also flipped.
MASKFORMER_TEST_SHORT_SIDES = (320, 480, 640, 800, 960, 1120)
MASKFORMER_TEST_MAX_SIZE = 4480


@dataclass
class TTAConfig:
    """Test-time augmentation settings.

    Views are sized either by `scales` (factors of the processor's own resize) or by `short_sides` (the original
    MaskFormer's `ResizeShortestEdge`: shorter side to each value, longer side capped at `max_size`), not both.

    Args:
        scales: factors applied to the processor's base size, e.g. `(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)`.
        flip: also predict the horizontally flipped image.
        window: `(height, width)` of sliding windows; inputs larger than this are processed window by window.
        window_overlap: overlap between neighbouring windows, as a fraction of the window (0 <= overlap < 1).
        short_sides: shorter-side lengths in pixels, e.g. `MASKFORMER_TEST_SHORT_SIDES`; replaces `scales`.
        max_size: cap on the longer side for `short_sides` views (None: no cap); at least the largest short side.
    """

    scales: Sequence[float] = (1.0,)
    flip: bool = False
    window: tuple[int, int] | None = None
    window_overlap: float = 1 / 3
    short_sides: Sequence[int] | None = None
    max_size: int | None = None

    def __post_init__(self) -> None:
        try:
            scales = tuple(float(s) for s in self.scales)
        except (TypeError, ValueError):
            raise ValueError(f"scales must be numbers, got {self.scales!r}") from None
        if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"scales must be finite and positive, got {scales}")
        self.scales = scales
        if self.short_sides is not None:
            self.short_sides = self._check_short_sides(self.short_sides, self.max_size)
            if self.scales != (1.0,):
                raise ValueError(
                    f"give either scales {self.scales} or short_sides {self.short_sides}, not both: short sides "
                    "set each view's size themselves"
                )
        elif self.max_size is not None:
            raise ValueError(f"max_size ({self.max_size}) caps short_sides views; give short_sides with it")
        if self.window is not None and (
            len(self.window) != 2 or not all(isinstance(side, int) and side >= 1 for side in self.window)
        ):
            raise ValueError(f"window must be (height, width) with positive integer sides, got {self.window}")
        if not 0 <= self.window_overlap < 1:
            raise ValueError(f"window_overlap must lie in [0, 1), got {self.window_overlap}")

    @staticmethod
    def _check_short_sides(short_sides: Sequence[int], max_size: int | None) -> tuple[int, ...]:
        try:
            sides = tuple(short_sides)
        except TypeError:
            raise ValueError(f"short_sides must be positive integers, got {short_sides!r}") from None
        if not sides or not all(isinstance(side, int) and not isinstance(side, bool) and side >= 1 for side in sides):
            raise ValueError(f"short_sides must be positive integers (pixels), got {short_sides!r}")
        if max_size is not None and (
            not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < max(sides)
        ):
            raise ValueError(
                f"max_size must be an integer >= the largest short side ({max(sides)}) or None, got {max_size!r}"
            )
        return sides

    @classmethod
    def maskformer_multi_scale(cls, flip: bool = True, **kwargs: Any) -> TTAConfig:
        """The original MaskFormer + FaPN multi-scale test: short sides 320, 480, ..., 1120, longer side at most
        4480, with flip (FaPN-full's ADE20K and COCO-Stuff-10K configs, `TEST.AUG`)."""
        return cls(short_sides=MASKFORMER_TEST_SHORT_SIDES, max_size=MASKFORMER_TEST_MAX_SIZE, flip=flip, **kwargs)

    @property
    def num_views(self) -> int:
        sizes = len(self.short_sides) if self.short_sides is not None else len(self.scales)
        return sizes * (2 if self.flip else 1)


def shortest_edge_size(height: int, width: int, short_side: int, max_size: int | None = None) -> tuple[int, int]:
    """`(h, w)` of an `(height, width)` image resized so that its shorter side is `short_side`, scaled down further
    when the longer side would exceed `max_size`; sides rounded to the nearest integer (detectron2's
    `ResizeShortestEdge`, which the original MaskFormer's test-time augmentation uses)."""
    scale = short_side / min(height, width)
    if max_size is not None and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride)) + [size - window]
    return sorted(set(starts))


def scores_rule(model_or_config: Any) -> tuple[Callable[[Any], torch.Tensor], bool]:
    """How a model's outputs become per-pixel class scores `(N, K, h, w)`, and whether those are probabilities: its
    family's rule (`Family.class_scores`), or `outputs.logits` for a semantic segmentation model of transformers
    outside the registry."""
    family = find_family(model_or_config)
    if family is None:
        return (lambda outputs: outputs.logits), False
    return family.class_scores, family.scores_are_probabilities


def model_scores(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """Class scores `(N, K, h, w)` at the resolution of `pixel_values` `(N, 3, h, w)` (`scores_rule`: a FaPN
    model's logits, a MaskFormer + FaPN model's semantic inference scores; no padding, so the model's `pixel_mask`
    crops its own padding to a multiple of 32)."""
    class_scores, _ = scores_rule(model)
    return class_scores(model(pixel_values=pixel_values))


def sliding_window_logits(
    model: torch.nn.Module, pixel_values: torch.Tensor, window: tuple[int, int], overlap: float = 1 / 3
) -> torch.Tensor:
    """Scores `(N, K, H, W)` (`model_scores`: logits, or mask-classification scores) of `pixel_values`
    `(N, 3, H, W)` computed on overlapping windows and averaged where they overlap. Images smaller than the window
    are processed whole."""
    _, _, height, width = pixel_values.shape
    win_h, win_w = min(window[0], height), min(window[1], width)
    stride_h = max(1, int(win_h * (1 - overlap)))
    stride_w = max(1, int(win_w * (1 - overlap)))
    logits = None
    counts = torch.zeros(1, 1, height, width, device=pixel_values.device)
    for top in _window_starts(height, win_h, stride_h):
        for left in _window_starts(width, win_w, stride_w):
            crop = pixel_values[:, :, top : top + win_h, left : left + win_w]
            crop_logits = model_scores(model, crop)
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
    """The model's float32 scores for `pixel_values` `(N, 3, h, w)` (`model_scores`: a FaPN model's logits, a
    MaskFormer + FaPN model's semantic inference scores), resized bilinearly (`align_corners=False`, as the
    processors' post-processing) to `size` = (H, W) of the original image or label: `(N, K, H, W)`.

    The one step from processor output to scores that the predictor and the Trainer's evaluation share. For a
    mask-classification model without windows this is the original MaskFormer's `sem_seg_postprocess` +
    `semantic_inference` (the einsum is per pixel, so cropping before or after it is the same)."""
    if window is not None:
        logits = sliding_window_logits(model, pixel_values, window, window_overlap)
    else:
        logits = model_scores(model, pixel_values)
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)


PREDICTOR_BACKENDS = ("torch", "onnxruntime", "auto")
# "auto": bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX), float32 elsewhere.
PREDICTOR_PRECISIONS = ("float32", "bfloat16", "auto")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (the `avx512_bf16` or `amx_bf16` flag of /proc/cpuinfo); False
    where that cannot be read. Without it, bf16 autocast on a CPU converts back and forth and gains little."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)  # transformers models and OnnxRuntimeModel
    return torch.device(device) if device is not None else next(model.parameters()).device


class SegmentationPredictor:
    """Predicts class maps at an image's original resolution, optionally with multi-scale, flip and windows.

    Args:
        model: a FaPN (or any) semantic segmentation model returning `.logits` at input resolution, a MaskFormer +
            FaPN model (`MaskFormerFaPNForInstanceSegmentation`), or an `OnnxRuntimeModel` (an exported model of
            either family run by onnxruntime; see `from_pretrained(backend=...)`).
        image_processor: makes every view's `pixel_values` (its resize rule is the base size of the TTA scales).
        threads: PyTorch's CPU threads while predicting: `"auto"` (the count in force, fewer while other processes
            keep cores busy; `fapn_hf.inference.threads`), a number, or None (PyTorch's setting as it is).
        precision: `"float32"`, `"bfloat16"` (the model's forward pass under bf16 autocast; scores are float32
            again before they are resized and averaged) or `"auto"` (bfloat16 on a CUDA device or a CPU with native
            bf16, `cpu_has_fast_bf16`; float32 elsewhere). bf16 changes a few labels near class boundaries.
    """

    def __init__(
        self,
        model: Any,
        image_processor: Any,
        device: str | torch.device | None = None,
        threads: int | str | None = "auto",
        precision: str = "float32",
    ):
        if precision not in PREDICTOR_PRECISIONS:
            raise ValueError(f"precision must be one of {PREDICTOR_PRECISIONS}, got {precision!r}")
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.model = model.to(self.device).eval()
        self.processor = image_processor
        self.threads = cpu_thread_governor(self.device, threads)
        if precision == "auto":
            precision = "bfloat16" if self.device.type == "cuda" or cpu_has_fast_bf16() else "float32"
        # An ONNX Runtime model has no autocast: it runs in the precision it was exported in.
        self.precision = precision if isinstance(model, torch.nn.Module) else "float32"

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        backend: str = "torch",
        threads: int | str | None = "auto",
        precision: str = "float32",
    ) -> SegmentationPredictor:
        """Loads a model folder or Hub id with its image processor.

        Args:
            backend: `"torch"` (the PyTorch model), `"onnxruntime"` (the folder's `model.onnx`, see
                `fapn_hf.export.onnx.export_onnx`; CPU tensors in and out) or `"auto"` (onnxruntime when the folder has
                `model.onnx` and onnxruntime is installed, PyTorch otherwise).
            threads: PyTorch's CPU threads while predicting (the constructor's `threads`; onnxruntime keeps its own).
            precision: the constructor's `precision` (PyTorch models only).
        """
        if backend not in PREDICTOR_BACKENDS:
            raise ValueError(f"backend must be one of {PREDICTOR_BACKENDS}, got {backend!r}")
        if backend != "torch":
            check_model_source(model_name_or_path)
            onnx_path = find_onnx_file(model_name_or_path)
            if backend == "onnxruntime" and onnx_path is None:
                raise FileNotFoundError(
                    f"backend='onnxruntime': {model_name_or_path} has no model.onnx; export it with "
                    f"`fapn-export-onnx {model_name_or_path}` (fapn_hf.export.onnx.export_onnx) or use backend='auto'"
                )
            use_onnx = backend == "onnxruntime" or importlib.util.find_spec("onnxruntime") is not None
            if onnx_path is not None and use_onnx:
                return cls._from_onnx(model_name_or_path, onnx_path, trust_remote_code)
        model, processor = load_model_and_processor(model_name_or_path, trust_remote_code)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, processor, device=device, threads=threads, precision=precision)

    @classmethod
    def _from_onnx(cls, model_name_or_path: str, onnx_path: Path, trust_remote_code: bool) -> SegmentationPredictor:
        from transformers import AutoConfig, AutoImageProcessor

        from ..export.onnx import OnnxRuntimeModel

        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        return cls(OnnxRuntimeModel(onnx_path, config), processor)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(self.model.config.id2label)

    @property
    def scores_are_probabilities(self) -> bool:
        """Whether the model's class scores are averaged over views as they are (MaskFormer + FaPN's semantic
        inference) rather than after a softmax (logits)."""
        return scores_rule(self.model)[1]

    def pixel_values(self, image: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The processor's `(1, 3, h, w)` input for `image`, at its own size rule or resized to `size` = (h, w)."""
        resize = {} if size is None else {"do_resize": True, "size": {"height": size[0], "width": size[1]}}
        return self.processor(images=image, return_tensors="pt", **resize)["pixel_values"].to(self.device)

    def _view_inputs(self, rgb: np.ndarray, tta: TTAConfig) -> Iterator[torch.Tensor]:
        """`pixel_values` `(1, 3, h, w)` of every TTA size (before flipping) of the decoded image `rgb`."""
        if tta.short_sides is not None:
            height, width = rgb.shape[:2]
            for side in tta.short_sides:
                yield self.pixel_values(rgb, shortest_edge_size(height, width, side, tta.max_size))
            return
        base = self.pixel_values(rgb)
        base_h, base_w = base.shape[-2:]
        for scale in tta.scales:
            if scale == 1.0:
                yield base
            else:
                yield self.pixel_values(rgb, (max(1, round(base_h * scale)), max(1, round(base_w * scale))))

    def _view_scores(self, image: Any, tta: TTAConfig) -> Iterator[torch.Tensor]:
        """Scores `(1, K, H, W)` at the original size of every TTA view of `image` (`logits_at_size`: logits, or
        mask-classification scores), flipped views flipped back."""
        rgb = decode_image(image)
        size = rgb.shape[:2]
        for scaled in self._view_inputs(rgb, tta):
            for flipped in (False, True) if tta.flip else (False,):
                view = scaled.flip(-1) if flipped else scaled
                bf16 = self.precision == "bfloat16"
                with self.threads.applied(), torch.autocast(self.device.type, torch.bfloat16, enabled=bf16):
                    scores = logits_at_size(self.model, view, size, tta.window, tta.window_overlap)
                yield scores.flip(-1) if flipped else scores

    @torch.inference_mode()
    def predict_probabilities(self, image: Any, tta: TTAConfig | None = None) -> torch.Tensor:
        """Scores `(K, H, W)` at the image's original resolution, averaged over the TTA views: softmax
        probabilities for FaPN semantic models; for MaskFormer + FaPN the original's semantic inference scores
        (`sum_q p_q(class) * sigmoid(mask_q)`, in [0, num_queries], not normalised over classes), averaged with no
        further softmax as the original `SemanticSegmentorWithTTA` does."""
        tta = tta or TTAConfig()
        total = None
        for scores in self._view_scores(image, tta):
            scores = scores[0] if self.scores_are_probabilities else scores.softmax(dim=1)[0]
            total = scores if total is None else total + scores
        return total / tta.num_views

    @torch.inference_mode()
    def predict(self, image: Any, tta: TTAConfig | None = None) -> np.ndarray:
        """Class ids `(H, W)` int64 at the image's original resolution: the argmax of the view's scores for one
        view, of the averaged scores (`predict_probabilities`) for several."""
        tta = tta or TTAConfig()
        if tta.num_views == 1:
            return next(self._view_scores(image, tta))[0].argmax(dim=0).cpu().numpy()
        return self.predict_probabilities(image, tta).argmax(dim=0).cpu().numpy()


__all__ = [
    "MASKFORMER_TEST_MAX_SIZE",
    "MASKFORMER_TEST_SHORT_SIDES",
    "PREDICTOR_BACKENDS",
    "PREDICTOR_PRECISIONS",
    "cpu_has_fast_bf16",
    "SegmentationPredictor",
    "TTAConfig",
    "logits_at_size",
    "model_scores",
    "scores_rule",
    "shortest_edge_size",
    "sliding_window_logits",
]
