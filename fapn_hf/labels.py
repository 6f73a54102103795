"""Label maps of the data sets FaPN models are trained on."""

from __future__ import annotations

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

LABEL_SETS: dict[str, tuple[str, ...]] = {"cityscapes": CITYSCAPES_LABELS, "ade20k": ADE20K_LABELS}


def label_maps(labels: str | list[str] | tuple[str, ...]) -> tuple[dict[int, str], dict[str, int]]:
    """`(id2label, label2id)` for a known label set name (`"cityscapes"`, `"ade20k"`) or a list of class names."""
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


__all__ = ["ADE20K_LABELS", "CITYSCAPES_LABELS", "LABEL_SETS", "label_maps"]
