"""Label maps of the data sets FaPN models are trained on (names, palettes, raw-id mappings).

The one check of label values lives in the shipped kernel (`modeling/label_checks.py`) and is re-exported here.
"""

from __future__ import annotations

import numpy as np

from .modeling.label_checks import MAX_REPORTED_VALUES, check_label_values

# Cityscapes' 19 evaluation classes, in train-id order (the 34 raw ids map onto these; the rest is ignored).
CITYSCAPES_LABELS: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# ADE20K SceneParsing's 150 classes (label 0, "other", is dropped with `do_reduce_labels=True`).
ADE20K_LABELS: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

# COCO-Stuff's 171 classes (80 things, then 91 stuff), in detectron2's / MaskFormer's contiguous id order (the
# COCO category ids 1..182 without the 11 unused ones). The MaskFormer + FaPN COCO-Stuff-10K model predicts these.
COCO_STUFF_LABELS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
    "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

# Pascal VOC 2012's 21 classes: background and the 20 object classes, in the order of the SegmentationClass PNGs'
# palette indices (255 marks object boundaries and "difficult" regions, which are ignored).
VOC_LABELS: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

LABEL_SETS: dict[str, tuple[str, ...]] = {
    "cityscapes": CITYSCAPES_LABELS,
    "ade20k": ADE20K_LABELS,
    "cocostuff": COCO_STUFF_LABELS,
    "voc": VOC_LABELS,
}

# Cityscapes' raw label ids (gtFine_labelIds) -> the 19 train ids; every other id is ignored (255).
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

# COCO-Stuff's raw label ids -> the 171 contiguous ids of `COCO_STUFF_LABELS`. Raw ids are the COCO category id minus
# one (0..181, 255 unlabelled), as the stuffthingmaps PNGs store them (and the COCO-Stuff-10K .mat labels after
# subtracting one, as MaskFormer's preparation script does); the 11 ids no category uses are ignored (255).
_COCO_UNUSED_CATEGORY_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
COCO_STUFF_RAW_ID_TO_CONTIGUOUS: dict[int, int] = {
    category_id - 1: index
    for index, category_id in enumerate(i for i in range(1, 183) if i not in _COCO_UNUSED_CATEGORY_IDS)
}

LABEL_MAPPINGS: dict[str, dict[int, int]] = {
    "cityscapes": CITYSCAPES_ID_TO_TRAIN_ID,
    "cocostuff": COCO_STUFF_RAW_ID_TO_CONTIGUOUS,
}

# The Cityscapes colours of the 19 train ids, used for overlays of Cityscapes models.
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip


def voc_palette(size: int = 256) -> np.ndarray:
    """`(size, 3)` uint8: the colour map of Pascal VOC's palette PNGs (the devkit's `labelcolormap`): the bits of an
    index, taken three at a time from the lowest, fill red, green and blue from their highest bit down, so class 1 is
    (128, 0, 0), class 2 (0, 128, 0) and 255 (the boundary) is (224, 224, 192)."""
    index = np.arange(size)
    colours = np.zeros((size, 3), dtype=np.int64)
    for step in range(8):
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * step + channel)) & 1) << (7 - step)
    return colours.astype(np.uint8)


# The VOC colours of the 21 classes, used for overlays of VOC models (the PNG palette holds all 256).
VOC_PALETTE: tuple[tuple[int, int, int], ...] = tuple(tuple(int(v) for v in row) for row in voc_palette(21))


def lookup_table(mapping: dict[int, int], ignore_index: int = 255, size: int = 65536) -> np.ndarray:
    """A lookup array turning raw label values into class ids: `table[raw]`; unmapped values become ignore."""
    table = np.full(size, ignore_index, dtype=np.int64)
    for raw, train_id in mapping.items():
        table[raw] = train_id
    return table


def palette(num_labels: int, labels: tuple[str, ...] | list[str] | None = None) -> np.ndarray:
    """`(num_labels, 3)` uint8 colours: Cityscapes' and Pascal VOC's own for their classes, else well-spread
    deterministic colours."""
    if labels is not None and tuple(labels) == CITYSCAPES_LABELS:
        return np.array(CITYSCAPES_PALETTE, dtype=np.uint8)
    if labels is not None and tuple(labels) == VOC_LABELS:
        return np.array(VOC_PALETTE, dtype=np.uint8)
    # Golden-ratio hue steps with alternating lightness keep neighbouring ids distinguishable.
    hues = (np.arange(num_labels) * 0.618033988749895) % 1.0
    lightness = np.where(np.arange(num_labels) % 2 == 0, 0.55, 0.4)
    saturation = 0.75
    chroma = (1 - np.abs(2 * lightness - 1)) * saturation
    sector = hues * 6
    second = chroma * (1 - np.abs(sector % 2 - 1))
    zeros = np.zeros_like(hues)
    choices = [
        (chroma, second, zeros), (second, chroma, zeros), (zeros, chroma, second),
        (zeros, second, chroma), (second, zeros, chroma), (chroma, zeros, second),
    ]  # fmt: skip
    index = np.minimum(sector.astype(int), 5)
    rgb = np.stack([np.choose(index, [c[channel] for c in choices]) for channel in range(3)], axis=1)
    rgb += (lightness - chroma / 2)[:, None]
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def label_maps(labels: str | list[str] | tuple[str, ...]) -> tuple[dict[int, str], dict[str, int]]:
    """`(id2label, label2id)` for a known label set name (`"cityscapes"`, `"ade20k"`, `"cocostuff"`, `"voc"`) or a
    list of class names."""
    if isinstance(labels, str):
        if labels not in LABEL_SETS:
            raise ValueError(f"Unknown label set {labels!r}; known sets: {', '.join(LABEL_SETS)} (or pass a list)")
        labels = LABEL_SETS[labels]
    names = list(labels)
    if len(names) < 2:
        raise ValueError(f"a label map needs at least 2 classes, got {names}")
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"class names must be unique; repeated: {duplicates}")
    id2label = dict(enumerate(names))
    return id2label, {name: index for index, name in id2label.items()}


__all__ = [
    "ADE20K_LABELS",
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_PALETTE",
    "COCO_STUFF_LABELS",
    "COCO_STUFF_RAW_ID_TO_CONTIGUOUS",
    "LABEL_MAPPINGS",
    "LABEL_SETS",
    "MAX_REPORTED_VALUES",
    "VOC_LABELS",
    "VOC_PALETTE",
    "check_label_values",
    "label_maps",
    "lookup_table",
    "palette",
    "voc_palette",
]
