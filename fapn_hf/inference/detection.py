"""Inference with the detectors (Faster R-CNN, Mask R-CNN, Panoptic FPN): one image in, its boxes, instance masks
and panoptic map at the image's original resolution out, and the COCO result formats that `fapn-predict` writes.

Every number comes from the model's image processor: `processor(images)` makes the input, its
`post_process_object_detection` / `post_process_instance_segmentation` / `post_process_panoptic_segmentation` map
the outputs to the original size, exactly what transformers' `object-detection` and `image-segmentation` pipelines
return. `load_predictor` picks the predictor a model's family calls for (`Family.predicts_pixel_classes`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..families import find_family
from ..modeling.image_decoding import decode_image
from .predictor import SegmentationPredictor, _model_device
from .sources import load_model_and_processor
from .threads import cpu_thread_governor


@dataclass
class Detections:
    """One image's detections at its original size `(H, W)`, in decreasing score.

    Args:
        boxes: `(n, 4)` float32 absolute xyxy in the image's pixels.
        scores: `(n,)` float32.
        labels: `(n,)` int64 class ids of `id2label` (thing classes).
        size: `(H, W)` of the image.
        masks: `(n, H, W)` bool instance masks (Mask R-CNN, Panoptic FPN), else None.
        panoptic: `(segmentation (H, W) int32 with 0 = none, segments_info)` (Panoptic FPN), else None;
            `segments_info` entries are `{"id", "label_id", "was_fused", "score"}`.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    size: tuple[int, int]
    masks: np.ndarray | None = None
    panoptic: tuple[np.ndarray, list[dict[str, Any]]] | None = None


class DetectionPredictor:
    """Predicts a detector's boxes, masks and panoptic map for one image at a time, at its original resolution.

    Args:
        model: a `FaPNRCNNForObjectDetection` (or its remote-code copy).
        image_processor: its `FaPNRCNNImageProcessor` (input resize and normalisation, post-processing).
        device: where the model runs (default: where it is).
        threads: PyTorch's CPU threads while predicting (`SegmentationPredictor`'s `threads`).
    """

    def __init__(
        self,
        model: Any,
        image_processor: Any,
        device: str | torch.device | None = None,
        threads: int | str | None = "auto",
    ):
        for method in ("post_process_object_detection",):
            if not hasattr(image_processor, method):
                raise TypeError(f"image_processor must have {method} (a detector's processor), got {image_processor!r}")
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.model = model.to(self.device).eval()
        self.processor = image_processor
        self.threads = cpu_thread_governor(self.device, threads)
        architecture = getattr(model.config, "meta_architecture", "faster_rcnn")
        self.has_masks = architecture in ("mask_rcnn", "panoptic_fpn")
        self.is_panoptic = architecture == "panoptic_fpn"

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        threads: int | str | None = "auto",
    ) -> DetectionPredictor:
        """Loads a detector folder or Hub id with its image processor (on CUDA when available)."""
        model, processor = load_model_and_processor(model_name_or_path, trust_remote_code)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, processor, device=device, threads=threads)

    @property
    def id2label(self) -> dict[int, str]:
        return {int(key): value for key, value in self.model.config.id2label.items()}

    @property
    def num_thing_labels(self) -> int:
        return int(getattr(self.model.config, "num_thing_labels", None) or len(self.id2label))

    @torch.inference_mode()
    def predict(self, image: Any) -> Detections:
        """Every detection the model returns (its own `box_score_threshold`) for `image` (a path, PIL image or
        array, read by `decode_image`), mapped to the original size by the processor's post-processing; Panoptic
        FPN's map with detectron2's combination settings (the processor's defaults)."""
        rgb = decode_image(image)
        size = [tuple(rgb.shape[:2])]
        inputs = self.processor(images=rgb, return_tensors="pt")
        with self.threads.applied():
            outputs = self.model(
                pixel_values=inputs["pixel_values"].to(self.device), image_sizes=inputs["image_sizes"].to(self.device)
            )
        # Threshold -1 keeps every detection, both methods drop the same empty boxes: the lists align one to one.
        boxes = self.processor.post_process_object_detection(outputs, threshold=-1.0, target_sizes=size)[0]
        result = Detections(
            boxes=boxes["boxes"].float().cpu().numpy(),
            scores=boxes["scores"].float().cpu().numpy(),
            labels=boxes["labels"].long().cpu().numpy(),
            size=size[0],
        )
        if self.has_masks:
            masks = self.processor.post_process_instance_segmentation(
                outputs, threshold=-1.0, target_sizes=size, return_binary_maps=True
            )[0]
            result.masks = masks["segmentation"].bool().cpu().numpy()
            if len(result.masks) != len(result.scores):
                raise RuntimeError(f"{len(result.masks)} masks for {len(result.scores)} boxes: post-processing differs")
        if self.is_panoptic:
            panoptic = self.processor.post_process_panoptic_segmentation(outputs, target_sizes=size)[0]
            result.panoptic = (panoptic["segmentation"].cpu().numpy(), panoptic["segments_info"])
        return result


def load_predictor(
    model_name_or_path: str,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    backend: str = "torch",
    threads: int | str | None = "auto",
    precision: str = "float32",
) -> SegmentationPredictor | DetectionPredictor:
    """The predictor a model calls for: `DetectionPredictor` for a family without per-pixel class scores (the
    detectors), `SegmentationPredictor` otherwise (which alone takes `backend="onnxruntime"` and `precision`);
    `threads` as the predictors take it."""
    from transformers import AutoConfig

    from .sources import check_model_source

    check_model_source(model_name_or_path)
    try:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        config = None  # the semantic predictor's loader says what is wrong, in its words
    family = find_family(config) if config is not None else None
    if family is not None and not family.predicts_pixel_classes:
        if backend == "onnxruntime":
            raise ValueError(f"backend='onnxruntime': {family.display_name} models have no ONNX export; use 'torch'")
        if precision != "float32":
            raise ValueError(f"precision={precision!r}: {family.display_name} models predict in float32")
        return DetectionPredictor.from_pretrained(model_name_or_path, device, trust_remote_code, threads)
    return SegmentationPredictor.from_pretrained(
        model_name_or_path, device, trust_remote_code, backend, threads, precision
    )


# ---------------------------------------------------------------------------------------------------------------------
# COCO result formats
# ---------------------------------------------------------------------------------------------------------------------


def _xywh(box: Any) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)]


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """A `(H, W)` bool mask as COCO's compressed RLE `{"size": [H, W], "counts": str}` (pycocotools)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_detection_results(detections: Detections, image_id: int) -> list[dict[str, Any]]:
    """COCO's detection results of one image: `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}` per
    detection, plus `"segmentation"` (compressed RLE) when there are masks. `category_id` is the model's class id
    (`id2label` key)."""
    results = []
    for index in range(len(detections.scores)):
        entry = {
            "image_id": int(image_id),
            "category_id": int(detections.labels[index]),
            "bbox": _xywh(detections.boxes[index]),
            "score": round(float(detections.scores[index]), 6),
        }
        if detections.masks is not None:
            entry["segmentation"] = encode_rle(detections.masks[index])
        results.append(entry)
    return results


def panoptic_rgb(segmentation: np.ndarray) -> np.ndarray:
    """COCO panoptic's PNG pixels of segment ids `(H, W)`: `(H, W, 3)` uint8 with id = R + 256 G + 256^2 B."""
    ids = np.asarray(segmentation, dtype=np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 256**3:
        raise ValueError(f"segment ids must lie in [0, 256^3), got {ids.min()}..{ids.max()}")
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2], axis=-1).astype(np.uint8)


def coco_panoptic_annotation(
    segmentation: np.ndarray, segments_info: list[dict[str, Any]], image_id: int, file_name: str, num_thing_labels: int
) -> dict[str, Any]:
    """COCO panoptic's annotation of one image: `{"image_id", "file_name", "segments_info": [{"id", "category_id",
    "iscrowd": 0, "isthing", "area", "bbox": [x, y, w, h], "score"}]}` (segments with no pixel left out)."""
    segments = []
    for segment in segments_info:
        rows, columns = np.nonzero(np.asarray(segmentation) == segment["id"])
        if not len(rows):
            continue
        x0, y0 = int(columns.min()), int(rows.min())
        segments.append(
            {
                "id": int(segment["id"]),
                "category_id": int(segment["label_id"]),
                "iscrowd": 0,
                "isthing": int(segment["label_id"]) < num_thing_labels,
                "area": len(rows),
                "bbox": [x0, y0, int(columns.max()) + 1 - x0, int(rows.max()) + 1 - y0],
                "score": segment.get("score"),
            }
        )
    return {"image_id": int(image_id), "file_name": file_name, "segments_info": segments}


__all__ = [
    "DetectionPredictor",
    "Detections",
    "coco_detection_results",
    "coco_panoptic_annotation",
    "encode_rle",
    "load_predictor",
    "panoptic_rgb",
]
