"""Image processor of the FaPN detectors (Faster R-CNN, Mask R-CNN, Panoptic FPN): detectron2's test input in
(`ResizeShortestEdge` 800 / 1333, normalisation, zero padding), COCO-style annotations in as the model's `labels`, and
transformers' post-processing out (object detection, instance and panoptic segmentation) with detectron2's semantics:
boxes rescaled, clipped and emptied boxes dropped (`detector_postprocess`), masks pasted by bilinear sampling at pixel
centres and thresholded (`paste_masks_in_image`), instances and stuff combined as Panoptic FPN does."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs, Unpack

from .image_decoding import (
    DecodedImagesMixin,
    check_target_sizes,
    flat_list,
    output_field,
    prepare_segmentation_maps,
    required_output_field,
)
from .remote_code import ProcessorCodeMixin
from .shortest_edge_resize import (
    DETECTRON2_MAX_SIZE,
    DETECTRON2_TEST_SHORT_EDGE,
    resize_image,
    resize_label_map,
    scale_boxes,
    shortest_edge_size,
)

# detectron2's input of converted MSRA models: BGR, 0..255, minus PIXEL_MEAN (B, G, R), std 1.
DETECTRON2_PIXEL_MEAN_BGR: tuple[float, float, float] = (103.53, 116.28, 123.675)
MSRA_NORMALISATION: dict[str, Any] = {
    "channel_order": "BGR",
    "do_rescale": False,
    "image_mean": list(DETECTRON2_PIXEL_MEAN_BGR),
    "image_std": [1.0, 1.0, 1.0],
}
# timm backbones: RGB in [0, 1], ImageNet mean / std.
IMAGENET_NORMALISATION: dict[str, Any] = {
    "channel_order": "RGB",
    "do_rescale": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}
# A box whose pixels lie this far outside its image is an error; closer, it is clipped (COCO's float boxes overshoot).
BOX_TOLERANCE = 1.0
# Panoptic FPN's combination (detectron2's defaults).
PANOPTIC_OVERLAP = 0.5
PANOPTIC_STUFF_AREA = 4096
PANOPTIC_INSTANCE_SCORE = 0.5
# The semantic head's label of ignored pixels.
SEMANTIC_IGNORE = 255

MetaArchitecture = Literal["faster_rcnn", "mask_rcnn", "panoptic_fpn"]


class FaPNRCNNImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    channel_order (`str`, *optional*, defaults to `"BGR"`):
        Channel order of `pixel_values`: `"BGR"` for converted MSRA models (detectron2's input), `"RGB"` for timm
        backbones. `image_mean` / `image_std` are in that order.
    num_thing_labels (`int`, *optional*):
        Thing classes of the model (`config.num_thing_labels`): annotations' `category_id` must lie in
        `[0, num_thing_labels)`; panoptic post-processing needs it to name stuff classes in `id2label` space.
    meta_architecture (`str`, *optional*):
        `"faster_rcnn"`, `"mask_rcnn"` or `"panoptic_fpn"`: which post-processing the processor offers (the
        `image-segmentation` pipeline prefers panoptic, then instance). None offers all three.
    """

    channel_order: Literal["RGB", "BGR"]
    num_thing_labels: int | None
    meta_architecture: MetaArchitecture | None


def _number(value: Any) -> float | None:
    """A real number as float (None for anything else: strings, booleans, None)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def _decode_rle(rle: Mapping[str, Any], where: str) -> np.ndarray:
    """COCO RLE (`{"size": [h, w], "counts": list or compressed str}`) -> `(h, w)` uint8."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError as error:  # shipped code: pycocotools may be missing where the folder is used
        raise ImportError(f"{where}: decoding COCO RLE masks needs pycocotools (`pip install pycocotools`)") from error
    size = rle.get("size")
    counts = rle.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2) or counts is None:
        raise ValueError(f"{where}: an RLE segmentation needs 'size' [height, width] and 'counts', got {sorted(rle)}")
    height, width = (int(side) for side in size)
    if isinstance(counts, (list, tuple)):
        encoded = coco_mask.frPyObjects({"size": [height, width], "counts": list(counts)}, height, width)
    else:
        encoded = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    return np.asarray(coco_mask.decode(encoded), dtype=np.uint8)


def _rasterise_polygons(polygons: Sequence[Sequence[float]], size: tuple[int, int], where: str) -> np.ndarray:
    """COCO polygons (absolute pixel coordinates `[x0, y0, x1, y1, ...]`) -> `(h, w)` uint8, by pycocotools as
    detectron2's `polygons_to_bitmask`."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError as error:
        raise ImportError(
            f"{where}: rasterising COCO polygons needs pycocotools (`pip install pycocotools`)"
        ) from error
    rings = []
    for ring in polygons:
        values = [_number(value) for value in ring] if isinstance(ring, (list, tuple, np.ndarray)) else [None]
        if len(values) < 6 or len(values) % 2 or any(value is None or not math.isfinite(value) for value in values):
            raise ValueError(
                f"{where}: a polygon is a flat list of at least 3 (x, y) points of finite numbers, got {ring!r:.80}"
            )
        rings.append(values)
    if not rings:
        return np.zeros(size, dtype=np.uint8)
    height, width = size
    encoded = coco_mask.frPyObjects(rings, height, width)
    return np.asarray(coco_mask.decode(coco_mask.merge(encoded)), dtype=np.uint8)


def paste_masks(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """detectron2's `paste_masks_in_image`: each `(M, M)` box-frame probability map sampled bilinearly
    (`grid_sample`, `align_corners=False`, zeros outside) at the centres of the image pixels its box covers, then
    `>= threshold` (a negative threshold returns the probabilities). `masks` `(N, M, M)`, `boxes` `(N, 4)` absolute
    xyxy in the image -> `(N, H, W)` bool (float with a negative threshold).

    As detectron2 on the CPU, each mask is sampled only over its box widened by one pixel (`floor(x0) - 1 ..
    ceil(x1) + 1`): outside the box a sample blends with the zero padding, below half the edge value, so a threshold of
    0.5 never keeps such a pixel anyway."""
    height, width = image_size
    soft = threshold < 0
    pasted = torch.zeros((len(masks), height, width), dtype=torch.float32 if soft else torch.bool, device=masks.device)
    for index, (mask, box) in enumerate(zip(masks.float(), boxes.float())):
        x0, y0, x1, y1 = box
        left, top = (int(max(math.floor(float(value)) - 1, 0)) for value in (x0, y0))
        right, bottom = int(min(math.ceil(float(x1)) + 1, width)), int(min(math.ceil(float(y1)) + 1, height))
        if right <= left or bottom <= top:
            continue
        ys = torch.arange(top, bottom, device=masks.device, dtype=torch.float32) + 0.5
        xs = torch.arange(left, right, device=masks.device, dtype=torch.float32) + 0.5
        # pixel centres in the box frame, normalised to [-1, 1] over the box (grid_sample's unit, align_corners=False)
        ys = (ys - y0) / (y1 - y0) * 2 - 1
        xs = (xs - x0) / (x1 - x0) * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), dim=-1)[None]
        sampled = F.grid_sample(mask[None, None], grid, mode="bilinear", align_corners=False)[0, 0]
        pasted[index, top:bottom, left:right] = sampled if soft else sampled >= threshold
    return pasted


class FaPNRCNNImageProcessor(ProcessorCodeMixin, DecodedImagesMixin, TorchvisionBackend):
    r"""
    Prepares images (and COCO-style annotations) for the FaPN detectors, as detectron2 does at test time:

    - decoding by the kernel's one rule (`decode_image`: gray, RGBA, 16-bit, EXIF orientation -> 8-bit RGB);
    - resize (`do_resize`): the shorter side to `size["shortest_edge"]` (800), the longer at most
      `size["longest_edge"]` (1333), exactly detectron2's `ResizeShortestEdge` (`int(x + 0.5)` sizes, PIL bilinear on
      the uint8 image; the kernel's `shortest_edge_resize`);
    - channels in `channel_order`, then `(x * rescale_factor - image_mean) / image_std` in float32 (defaults:
      detectron2's MSRA input, BGR 0..255 minus (103.53, 116.28, 123.675), std 1 (`MSRA_NORMALISATION`); timm
      backbones take `IMAGENET_NORMALISATION`);
    - zero padding at the bottom and right to the batch's largest size (the model pads further to 32).

    Returns `pixel_values` `(N, 3, H, W)` and `image_sizes` `(N, 2)` (each image's resized height and width) and, with
    `annotations`, `labels`: one dict per image with `boxes` `(K, 4)` absolute xyxy in `pixel_values` pixels,
    `class_labels` `(K,)`, `iscrowd` `(K,)`, `masks` `(K, h, w)` uint8 when the annotations have segmentations, and
    `semantic_labels` `(h, w)` when `segmentation_maps` are given.

    Post-processing (`post_process_object_detection`, `post_process_instance_segmentation`,
    `post_process_panoptic_segmentation`) reads the model's `FaPNRCNNOutput` and maps boxes from `image_sizes` to
    `target_sizes` as detectron2's `detector_postprocess`.
    """

    valid_kwargs = FaPNRCNNImageProcessorKwargs
    model_input_names = ["pixel_values", "image_sizes"]
    size = {"shortest_edge": DETECTRON2_TEST_SHORT_EDGE, "longest_edge": DETECTRON2_MAX_SIZE}
    default_to_square = False
    resample = PILImageResampling.BILINEAR  # what the resize does (PIL's filter), recorded for the config
    do_resize = True
    do_rescale = MSRA_NORMALISATION["do_rescale"]
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = MSRA_NORMALISATION["image_mean"]
    image_std = MSRA_NORMALISATION["image_std"]
    channel_order = MSRA_NORMALISATION["channel_order"]
    do_pad = True
    do_convert_rgb = True
    num_thing_labels = None
    meta_architecture = None

    def __init__(self, **kwargs: Unpack[FaPNRCNNImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)
        self._check_settings(self.channel_order, self.meta_architecture, self.num_thing_labels, self.size)

    @staticmethod
    def _check_settings(channel_order: Any, meta_architecture: Any, num_thing_labels: Any, size: Any) -> None:
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        if meta_architecture not in (None, "faster_rcnn", "mask_rcnn", "panoptic_fpn"):
            raise ValueError(
                "meta_architecture must be 'faster_rcnn', 'mask_rcnn', 'panoptic_fpn' or None, got "
                f"{meta_architecture!r}"
            )
        if num_thing_labels is not None and (
            isinstance(num_thing_labels, bool) or not isinstance(num_thing_labels, int) or num_thing_labels < 1
        ):
            raise ValueError(f"num_thing_labels must be a positive int or None, got {num_thing_labels!r}")
        if size is not None and not getattr(size, "shortest_edge", None):
            raise ValueError(
                f"size must be {{'shortest_edge': ..., 'longest_edge': ...}} (detectron2's ResizeShortestEdge), got "
                f"{dict(size)}"
            )

    def preprocess(
        self,
        images: Any,
        annotations: Any = None,
        segmentation_maps: Any = None,
        **kwargs: Unpack[FaPNRCNNImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        images (`ImageInput`):
            One image or a batch (file paths, PIL images, NumPy arrays, tensors).
        annotations (`dict` or `list[dict]`, *optional*):
            One dict per image in transformers' COCO detection format: `{"image_id": ..., "annotations": [{"bbox":
            [x, y, w, h], "category_id": 0-based thing class, "iscrowd": 0 / 1, "segmentation": polygons or RLE,
            "area": ... (not used)}, ...]}`; instance masks may also come as `"masks"`, an `(N, H, W)` array per
            image, or as one `(H, W)` array in an annotation's `"segmentation"`. Coordinates are pixels of the image
            as given.
        segmentation_maps (`ImageInput`, *optional*):
            One `(H, W)` map per image in the panoptic semantic head's channel space (0 = any thing, 1 + j = stuff
            class j, 255 ignored), resized with the image (nearest) into `labels[i]["semantic_labels"]`.
        """
        return super().preprocess(images, annotations, segmentation_maps, **kwargs)

    def _preprocess_image_like_inputs(
        self,
        images: Any,
        annotations: Any,
        segmentation_maps: Any,
        do_convert_rgb: bool,
        input_data_format: Any,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        self._check_settings(
            kwargs.get("channel_order"), kwargs.get("meta_architecture"), kwargs.get("num_thing_labels"), None
        )
        images = self._prepare_image_like_inputs(
            images=images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=device
        )
        targets = None
        if annotations is not None:
            targets = self._parse_annotations(annotations, images, kwargs.get("num_thing_labels"))
        maps = None if segmentation_maps is None else prepare_segmentation_maps(segmentation_maps, images)
        return self._preprocess(images, targets, maps, **kwargs)

    def _preprocess(
        self,
        images: list[torch.Tensor],
        targets: list[dict[str, Any]] | None = None,
        maps: list[torch.Tensor] | None = None,
        *,
        do_resize: bool,
        size: Any,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: Any,
        image_std: Any,
        do_pad: bool,
        return_tensors: Any = None,
        channel_order: str = "BGR",
        pad_size: Any = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Resize (with the targets), normalise, pad; see the class docstring."""
        if do_resize and not getattr(size, "shortest_edge", None):
            raise ValueError(f"size must be {{'shortest_edge': ..., 'longest_edge': ...}}, got {dict(size)}")
        pixel_values, image_sizes, labels = [], [], []
        for index, image in enumerate(images):
            old_size = tuple(image.shape[-2:])
            new_size = shortest_edge_size(*old_size, size.shortest_edge, size.longest_edge) if do_resize else old_size
            image = resize_image(image, new_size)
            if channel_order == "BGR":
                image = image.flip(0)
            pixel_values.append(self._normalise(image, do_rescale, rescale_factor, do_normalize, image_mean, image_std))
            image_sizes.append(new_size)
            if targets is not None:
                labels.append(self._resize_target(targets[index], old_size, new_size))
            if maps is not None:
                if targets is None:
                    labels.append({})
                labels[index]["semantic_labels"] = resize_label_map(maps[index][0].long(), new_size)
        if any("masks" in label for label in labels):  # an image without objects gets (0, h, w) masks
            for label, image_size in zip(labels, image_sizes):
                if "boxes" in label and len(label["boxes"]) == 0:
                    label.setdefault("masks", torch.zeros((0, *image_size), dtype=torch.uint8))
        if do_pad:
            if pad_size is not None:
                padded = (pad_size.height, pad_size.width)
                too_large = [i for i, s in enumerate(image_sizes) if s[0] > padded[0] or s[1] > padded[1]]
                if too_large:
                    raise ValueError(
                        f"image {too_large[0]} is {image_sizes[too_large[0]]} (H, W) after resizing, larger than "
                        f"pad_size {padded}"
                    )
            else:
                padded = tuple(map(max, zip(*image_sizes)))
            pixel_values = [F.pad(v, (0, padded[1] - v.shape[-1], 0, padded[0] - v.shape[-2])) for v in pixel_values]
        elif return_tensors is not None and len(set(image_sizes)) > 1:
            raise ValueError(
                f"images of sizes {sorted(set(image_sizes))} (H, W) cannot be stacked with do_pad=False; pad them "
                "(do_pad=True) or pass return_tensors=None for a list"
            )
        device = pixel_values[0].device
        data = {"pixel_values": pixel_values, "image_sizes": torch.tensor(image_sizes, dtype=torch.long, device=device)}
        if return_tensors is None:
            data["image_sizes"] = [list(s) for s in image_sizes]
        encoded = BatchFeature(data=data, tensor_type=return_tensors)
        if labels:  # a list of dicts of tensors (the model's format, not one stacked tensor), on the images' device
            encoded["labels"] = [{key: value.to(device) for key, value in label.items()} for label in labels]
        return encoded

    @staticmethod
    def _normalise(
        image: torch.Tensor,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: Any,
        image_std: Any,
    ) -> torch.Tensor:
        """`(C, H, W)` -> float32 `(x * rescale_factor - mean) / std`, in detectron2's float32 order."""
        values = image.to(torch.float32)
        if do_rescale:
            values = values * rescale_factor
        if do_normalize:
            mean = torch.as_tensor(image_mean, dtype=torch.float32, device=values.device).reshape(-1, 1, 1)
            std = torch.as_tensor(image_std, dtype=torch.float32, device=values.device).reshape(-1, 1, 1)
            if mean.numel() != len(values) or std.numel() != len(values):
                raise ValueError(
                    f"image_mean and image_std take one value per channel ({len(values)}), got {image_mean!r} and "
                    f"{image_std!r}; with do_convert_rgb=False the images keep their own channels"
                )
            values = (values - mean) / std
        return values

    # ------------------------------------------------------------------------------------------------------------
    # Annotations
    # ------------------------------------------------------------------------------------------------------------

    def _parse_annotations(
        self, annotations: Any, images: list[torch.Tensor], num_thing_labels: int | None
    ) -> list[dict[str, Any]]:
        """COCO-style annotations -> per image `boxes` `(K, 4)` xyxy float32, `class_labels` `(K,)`, `iscrowd` `(K,)`
        and optional `masks` (`(K, H, W)` uint8 at the image's size, or polygons kept for rasterising after the
        resize), checked against their image."""
        if isinstance(annotations, Mapping):
            annotations = [annotations]
        if not isinstance(annotations, (list, tuple)):
            raise ValueError(
                f"annotations must be a dict (one image) or a list of dicts (one per image), got "
                f"{type(annotations).__name__}"
            )
        annotations = flat_list(annotations)
        if len(annotations) != len(images):
            raise ValueError(f"got {len(images)} images but {len(annotations)} annotation dicts")
        return [
            self._parse_image_annotations(target, tuple(image.shape[-2:]), index, num_thing_labels)
            for index, (target, image) in enumerate(zip(annotations, images))
        ]

    @staticmethod
    def _parse_image_annotations(
        target: Any, image_size: tuple[int, int], index: int, num_thing_labels: int | None
    ) -> dict[str, Any]:
        height, width = image_size
        if not isinstance(target, Mapping) or "annotations" not in target:
            raise ValueError(
                f"annotations of image {index} must be a dict with an 'annotations' list (transformers' COCO "
                f"detection format), got {type(target).__name__}"
                + (f" with keys {sorted(target)}" if isinstance(target, Mapping) else "")
            )
        name = f"image {index}" + (f" (image_id {target['image_id']})" if "image_id" in target else "")
        objects = target["annotations"]
        if not isinstance(objects, (list, tuple)):
            raise ValueError(f"{name}: 'annotations' must be a list of dicts, got {type(objects).__name__}")
        boxes, classes, crowd, segmentations = [], [], [], []
        for number, obj in enumerate(objects):
            where = f"{name}, annotation {number}" + (
                f" (id {obj['id']})" if isinstance(obj, Mapping) and "id" in obj else ""
            )
            if not isinstance(obj, Mapping):
                raise ValueError(f"{where} must be a dict, got {type(obj).__name__}")
            bbox = obj.get("bbox")
            values = [_number(v) for v in bbox] if isinstance(bbox, (list, tuple, np.ndarray, torch.Tensor)) else []
            if len(values) != 4 or any(v is None for v in values):
                raise ValueError(f"{where}: 'bbox' must be [x, y, width, height] numbers, got {bbox!r}")
            x, y, w, h = values
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{where}: 'bbox' {bbox} holds NaN or infinite values")
            if w < 0 or h < 0:
                raise ValueError(f"{where}: 'bbox' {bbox} has a negative width or height ([x, y, width, height])")
            tol = BOX_TOLERANCE
            if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
                raise ValueError(
                    f"{where}: 'bbox' {bbox} ([x, y, width, height]) reaches outside its image of {width}x{height} "
                    f"(width x height) by more than {tol:g} pixel"
                )
            category = obj.get("category_id")
            if isinstance(category, (bool, np.bool_)) or _number(category) is None or not float(category).is_integer():
                raise ValueError(f"{where}: 'category_id' must be an int (a 0-based thing class), got {category!r}")
            category = int(category)
            if category < 0 or (num_thing_labels is not None and category >= num_thing_labels):
                upper = f"[0, {num_thing_labels})" if num_thing_labels is not None else "0 or more"
                raise ValueError(
                    f"{where}: 'category_id' {category} is out of range: thing classes are {upper}, contiguous and "
                    "0-based (map COCO's category ids first)"
                )
            is_crowd = obj.get("iscrowd", 0)
            if _number(is_crowd) not in (0.0, 1.0):
                raise ValueError(f"{where}: 'iscrowd' must be 0 or 1, got {is_crowd!r}")
            boxes.append([max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))])
            classes.append(category)
            crowd.append(int(_number(is_crowd)))
            segmentations.append((obj.get("segmentation"), where))
        parsed: dict[str, Any] = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "class_labels": torch.tensor(classes, dtype=torch.long),
            "iscrowd": torch.tensor(crowd, dtype=torch.long),
        }
        masks = target.get("masks")
        if masks is not None:
            array = np.asarray(masks.detach().cpu() if isinstance(masks, torch.Tensor) else masks)
            if array.ndim != 3 or array.shape[0] != len(boxes) or array.shape[1:] != (height, width):
                raise ValueError(
                    f"{name}: 'masks' must be ({len(boxes)}, {height}, {width}) (one mask per annotation, of the "
                    f"image's size), got shape {array.shape}"
                )
            parsed["mask_parts"] = [("array", (plane != 0).astype(np.uint8), name) for plane in array]
        elif any(segmentation is not None for segmentation, _ in segmentations):
            parts = []
            for segmentation, where in segmentations:
                parts.append(FaPNRCNNImageProcessor._mask_part(segmentation, (height, width), where))
            parsed["mask_parts"] = parts
        return parsed

    @staticmethod
    def _mask_part(segmentation: Any, size: tuple[int, int], where: str) -> tuple[str, Any, str]:
        """One annotation's segmentation as ("polygons", rings) (rasterised after the resize, as detectron2 keeps
        polygons) or ("array", `(H, W)` uint8)."""
        if segmentation is None:
            raise ValueError(f"{where} has no 'segmentation' while other annotations of its image have one")
        if isinstance(segmentation, Mapping):
            mask = _decode_rle(segmentation, where)
        elif isinstance(segmentation, (np.ndarray, torch.Tensor)) and segmentation.ndim == 2:
            mask = np.asarray(segmentation.detach().cpu() if isinstance(segmentation, torch.Tensor) else segmentation)
            mask = (mask != 0).astype(np.uint8)
        elif isinstance(segmentation, (list, tuple)):
            for ring in segmentation:  # checked now, so that errors name the annotation before any work
                _rasterise_polygons([ring], (1, 1), where)
            return ("polygons", [list(map(float, ring)) for ring in segmentation], where)
        else:
            raise ValueError(
                f"{where}: 'segmentation' must be polygons (a list of [x0, y0, x1, y1, ...]), COCO RLE (a dict) or an "
                f"(H, W) array, got {type(segmentation).__name__}"
            )
        if mask.shape != size:
            raise ValueError(
                f"{where}: its mask is {mask.shape[0]}x{mask.shape[1]} (height x width) but its image is "
                f"{size[0]}x{size[1]}"
            )
        return ("array", mask, where)

    @staticmethod
    def _resize_target(target: dict[str, Any], old_size: tuple[int, int], new_size: tuple[int, int]) -> dict:
        """A parsed target in the resized image's pixels: boxes scaled, polygons scaled then rasterised at the new
        size, mask arrays resized by nearest neighbour (detectron2's `apply_segmentation`)."""
        labels = {
            "boxes": scale_boxes(target["boxes"], old_size, new_size),
            "class_labels": target["class_labels"].clone(),
            "iscrowd": target["iscrowd"].clone(),
        }
        parts = target.get("mask_parts")
        if parts is not None:
            factors = (new_size[1] / old_size[1], new_size[0] / old_size[0])
            masks = []
            for kind, value, where in parts:
                if kind == "polygons":
                    rings = [[coordinate * factors[i % 2] for i, coordinate in enumerate(ring)] for ring in value]
                    masks.append(torch.from_numpy(_rasterise_polygons(rings, new_size, where)))
                else:
                    masks.append(resize_label_map(torch.from_numpy(value), new_size))
            labels["masks"] = torch.stack(masks) if masks else torch.zeros((0, *new_size), dtype=torch.uint8)
        return labels

    # ------------------------------------------------------------------------------------------------------------
    # Post-processing
    # ------------------------------------------------------------------------------------------------------------

    def _detections(
        self, outputs: Any, target_sizes: Any, method: str, with_masks: bool, mask_threshold: float = 0.5
    ) -> list[dict[str, torch.Tensor]]:
        """Per image: `scores` `(n,)`, `labels` `(n,)`, `boxes` `(n, 4)` in `target_sizes[i]` pixels (else in the
        processed image's), `size` and, with `with_masks`, `masks` `(n, H, W)` bool pasted at that size: the valid
        entries (`num_detections`), boxes scaled from `image_sizes`, clipped, empty ones dropped, then masks pasted
        (detectron2's `detector_postprocess`)."""
        boxes = required_output_field(outputs, "pred_boxes", method)
        scores = required_output_field(outputs, "scores", method)
        classes = required_output_field(outputs, "pred_labels", method)
        counts = output_field(outputs, "num_detections", method)
        image_sizes = output_field(outputs, "image_sizes", method)
        masks = required_output_field(outputs, "pred_masks", method) if with_masks else None
        batch = boxes.shape[0]
        target_sizes = check_target_sizes(target_sizes, batch)
        if image_sizes is None and target_sizes is not None:
            raise ValueError(
                f"{method} maps boxes from the model's image_sizes to target_sizes, but the output has no image_sizes"
            )
        results = []
        for index in range(batch):
            count = int(counts[index]) if counts is not None else int((classes[index] >= 0).sum())
            box = boxes[index, :count].float()
            processed = tuple(int(side) for side in image_sizes[index]) if image_sizes is not None else None
            size = target_sizes[index] if target_sizes is not None else processed
            if processed is not None:
                box = box * torch.tensor(
                    [size[1] / processed[1], size[0] / processed[0]] * 2, dtype=box.dtype, device=box.device
                )
                box = torch.stack(
                    [box[:, 0].clamp(0, size[1]), box[:, 1].clamp(0, size[0]), box[:, 2].clamp(0, size[1]),
                     box[:, 3].clamp(0, size[0])], dim=1
                )  # fmt: skip
            keep = (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
            result = {
                "scores": scores[index, :count][keep].float(),
                "labels": classes[index, :count][keep].long(),
                "boxes": box[keep],
            }
            if with_masks:
                if size is None:
                    raise ValueError(
                        f"{method} pastes masks into an image: give target_sizes or an output with image_sizes"
                    )
                result["masks"] = paste_masks(masks[index, :count][keep], result["boxes"], size, mask_threshold)
            result["size"] = size
            results.append(result)
        return results

    def post_process_object_detection(
        self, outputs: Any, threshold: float = 0.5, target_sizes: Any = None
    ) -> list[dict[str, torch.Tensor]]:
        """Per image `{"scores": (n,), "labels": (n,), "boxes": (n, 4)}`: the model's detections with a score above
        `threshold` (as transformers' DETR: `score > threshold`), boxes absolute xyxy in `target_sizes[i]` pixels
        (`(height, width)` per image, e.g. the original image's; else in the processed image's), clipped to it, empty
        ones dropped; labels are 0-based ids of `id2label`. What the `object-detection` pipeline reads."""
        results = []
        for detections in self._detections(outputs, target_sizes, "post_process_object_detection", with_masks=False):
            keep = detections["scores"] > threshold
            results.append({key: detections[key][keep] for key in ("scores", "labels", "boxes")})
        return results

    def _hidden_unless(self, name: str, architectures: tuple[str, ...]) -> Any:
        if self.meta_architecture is not None and self.meta_architecture not in architectures:
            raise AttributeError(
                f"{type(self).__name__}.{name} is off for a {self.meta_architecture} model (meta_architecture="
                f"{self.meta_architecture!r}); it needs {' or '.join(architectures)}"
            )
        return getattr(self, f"_{name}")

    @property
    def post_process_instance_segmentation(self):  # noqa: D401 - a bound method, or AttributeError
        return self._hidden_unless("post_process_instance_segmentation", ("mask_rcnn", "panoptic_fpn"))

    @property
    def post_process_panoptic_segmentation(self):
        return self._hidden_unless("post_process_panoptic_segmentation", ("panoptic_fpn",))

    def _post_process_instance_segmentation(
        self,
        outputs: Any,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float | None = None,
        target_sizes: Any = None,
        return_binary_maps: bool = False,
        **unused: Any,
    ) -> list[dict[str, Any]]:
        """Per image `{"segmentation", "segments_info"}` as transformers' Mask2Former returns them: instances with
        `score >= threshold`, masks pasted into `target_sizes[i]` (else the processed size) and thresholded at
        `mask_threshold` (detectron2: 0.5). `segmentation` is `(H, W)` int32 with -1 where no instance lies and
        segment ids 0, 1, ... painted in increasing score (the higher score on top where instances overlap); with
        `return_binary_maps` it is the `(n, H, W)` bool stack of every instance's whole mask (what COCO evaluation
        wants). `segments_info`: `{"id", "label_id", "was_fused": False, "score"}` in decreasing score.
        `overlap_mask_area_threshold` (the pipeline passes it) does not apply: detections overlap."""
        results = []
        method = "post_process_instance_segmentation"
        for detections in self._detections(outputs, target_sizes, method, True, mask_threshold):
            keep = detections["scores"] >= threshold
            masks, scores, labels = detections["masks"][keep], detections["scores"][keep], detections["labels"][keep]
            segments = [
                {"id": i, "label_id": int(label), "was_fused": False, "score": round(float(score), 6)}
                for i, (label, score) in enumerate(zip(labels, scores))
            ]
            if return_binary_maps:
                segmentation = masks
            else:
                segmentation = torch.full(detections["size"], -1, dtype=torch.int32, device=masks.device)
                for i in reversed(range(len(masks))):
                    segmentation[masks[i]] = i
            results.append({"segmentation": segmentation, "segments_info": segments})
        return results

    def _post_process_panoptic_segmentation(
        self,
        outputs: Any,
        threshold: float = PANOPTIC_INSTANCE_SCORE,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = PANOPTIC_OVERLAP,
        target_sizes: Any = None,
        stuff_area_limit: int = PANOPTIC_STUFF_AREA,
        label_ids_to_fuse: Any = None,
        **unused: Any,
    ) -> list[dict[str, Any]]:
        """Per image `{"segmentation": (H, W) int32, "segments_info": [...]}`, Panoptic FPN's combination (detectron2's
        `combine_semantic_and_instance_outputs`) at `target_sizes[i]` (else the processed size):

        1. instances in decreasing score while `score >= threshold` (detectron2: 0.5; the `image-segmentation`
           pipeline passes 0.9 unless told `threshold=0.5`), masks pasted at `mask_threshold`; one is skipped when
           more than `overlap_mask_area_threshold` (0.5) of its mask is already taken, else its free pixels become
           a segment;
        2. stuff from the semantic argmax (logits upsampled 4x to the padded input, cropped to the image, resized to
           the target size, all bilinear with `align_corners=False`): each stuff class with at least
           `stuff_area_limit` (4096) free pixels becomes a segment; channel 0 ("any thing") never does.

        `segmentation` holds 0 where no segment lies and segment ids 1, 2, ...; `segments_info` entries are
        `{"id", "label_id", "was_fused": False, "score"}` with `label_id` in `id2label` space (a stuff channel
        `1 + j` is `num_thing_labels + j`); a stuff segment's score is its mean semantic probability. Stuff is one
        segment per class already, so `label_ids_to_fuse` changes nothing."""
        method = "post_process_panoptic_segmentation"
        semantic = required_output_field(outputs, "semantic_logits", method)
        if self.num_thing_labels is None:
            raise ValueError(
                f"{method} names stuff classes in id2label space, which needs num_thing_labels; set "
                "`processor.num_thing_labels = config.num_thing_labels`"
            )
        image_sizes = output_field(outputs, "image_sizes", method)
        results = []
        for index, detections in enumerate(self._detections(outputs, target_sizes, method, True, mask_threshold)):
            size = detections["size"]
            logits = F.interpolate(
                semantic[index : index + 1].float(),
                size=(4 * semantic.shape[-2], 4 * semantic.shape[-1]),
                mode="bilinear",
                align_corners=False,
            )
            if image_sizes is not None:
                logits = logits[..., : int(image_sizes[index][0]), : int(image_sizes[index][1])]
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0]
            segmentation, segments = combine_panoptic(
                detections["masks"],
                detections["scores"],
                detections["labels"],
                logits,
                self.num_thing_labels,
                threshold,
                overlap_mask_area_threshold,
                stuff_area_limit,
            )
            results.append({"segmentation": segmentation, "segments_info": segments})
        return results


def combine_panoptic(
    masks: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    semantic_logits: torch.Tensor,
    num_thing_labels: int,
    score_threshold: float = PANOPTIC_INSTANCE_SCORE,
    overlap_threshold: float = PANOPTIC_OVERLAP,
    stuff_area_limit: int = PANOPTIC_STUFF_AREA,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """detectron2's Panoptic FPN combination on one image: `masks` `(n, H, W)` bool, `scores` / `labels` `(n,)`,
    `semantic_logits` `(C_sem, H, W)` (channel 0 = any thing, `1 + j` = stuff `num_thing_labels + j`) ->
    (`(H, W)` int32 segment ids, 0 = none; segments_info). See `post_process_panoptic_segmentation`."""
    height, width = semantic_logits.shape[-2:]
    panoptic = torch.zeros((height, width), dtype=torch.int32, device=semantic_logits.device)
    segments: list[dict[str, Any]] = []
    for index in torch.argsort(-scores, stable=True).tolist():
        score = float(scores[index])
        if score < score_threshold:
            break
        mask = masks[index]
        area = int(mask.sum())
        if area == 0:
            continue
        taken = int((mask & (panoptic > 0)).sum())
        if taken / area > overlap_threshold:
            continue
        segment_id = len(segments) + 1
        panoptic[mask & (panoptic == 0)] = segment_id
        segments.append(
            {"id": segment_id, "label_id": int(labels[index]), "was_fused": False, "score": round(score, 6)}
        )
    classes = semantic_logits.argmax(dim=0)
    probabilities = None
    for channel in torch.unique(classes).tolist():
        if channel == 0:  # "any thing": instances cover it
            continue
        region = (classes == channel) & (panoptic == 0)
        area = int(region.sum())
        if area < stuff_area_limit:
            continue
        if probabilities is None:
            probabilities = semantic_logits.softmax(dim=0)
        segment_id = len(segments) + 1
        panoptic[region] = segment_id
        segments.append(
            {
                "id": segment_id,
                "label_id": num_thing_labels + channel - 1,
                "was_fused": False,
                "score": round(float(probabilities[channel][region].mean()), 6),
            }
        )
    return panoptic, segments


__all__ = [
    "DETECTRON2_PIXEL_MEAN_BGR",
    "IMAGENET_NORMALISATION",
    "MSRA_NORMALISATION",
    "FaPNRCNNImageProcessor",
    "FaPNRCNNImageProcessorKwargs",
    "combine_panoptic",
    "paste_masks",
]
