"""Segment images with a FaPN model: a label PNG (class ids, with the palette) and a colour overlay per image.

python scripts/predict.py --model outputs/demo --output-dir outputs/predictions photo1.jpg photo2.png
python scripts/predict.py --model outputs/demo --scales 0.75,1.0,1.25 --flip --window 512x512 big.jpg

Images are read like everywhere in fapn_hf (`fapn_hf.image_processing_fapn.decode_image`: EXIF orientation,
16-bit and float images, transparency over white, first frame of animations). Outputs are
`<stem>_labels.png` and `<stem>_overlay.png`, in sub-folders mirroring the inputs' folders below their common
folder; inputs of one folder that share a stem keep their extension in the name (`photo_png`, `photo_jpg`).
Existing outputs are kept unless `--overwrite`. Models with more than 256 classes get 16-bit grayscale label PNGs
(a palette holds 256 colours).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image

from fapn_hf.image_processing_fapn import decode_image
from fapn_hf.inference import SegmentationPredictor, TTAConfig, parse_scales
from fapn_hf.labels import palette
from fapn_hf.transforms import parse_size
from fapn_hf.visualization import overlay

PALETTE_SIZE = 256


def output_names(paths: list[Path]) -> dict[Path, Path]:
    """A distinct output stem (relative path without suffix) for each distinct input file, see the module doc."""
    files = list(dict.fromkeys(path.resolve() for path in paths))
    common = Path(os.path.commonpath([path.parent for path in files]))
    stems = Counter((path.parent, path.stem) for path in files)
    names = {
        path: path.parent.relative_to(common)
        / (f"{path.stem}_{path.suffix.lstrip('.')}" if stems[path.parent, path.stem] > 1 else path.stem)
        for path in files
    }
    # Whatever still collides (e.g. photo.png + photo.jpg + photo_png.gif) gets a counter.
    seen: Counter[Path] = Counter()
    for path, name in names.items():
        seen[name] += 1
        if seen[name] > 1:
            names[path] = name.with_name(f"{name.name}_{seen[name]}")
    return names


def label_image(labels: np.ndarray, colors: np.ndarray) -> PIL.Image.Image:
    """Class ids as a palette PNG image, or as 16-bit grayscale when they do not fit a palette."""
    if len(colors) > PALETTE_SIZE:
        return PIL.Image.fromarray(labels.astype(np.uint16))
    image = PIL.Image.fromarray(labels.astype(np.uint8))
    image.putpalette(colors.flatten().tolist())  # an "L" image with a palette becomes "P"
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/predictions"))
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them)")
    parser.add_argument("--scales", type=parse_scales, default=(1.0,), help="comma-separated TTA scales")
    parser.add_argument("--flip", action="store_true", help="also average the horizontally flipped prediction")
    parser.add_argument("--window", type=parse_size, default=None, help="sliding-window size HxW")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    parser.add_argument("--device", default=None)
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)

    try:
        predictor = SegmentationPredictor.from_pretrained(args.model, args.device, args.trust_remote_code)
        tta = TTAConfig(scales=args.scales, flip=args.flip, window=args.window)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from error
    names = [predictor.id2label[i] for i in range(len(predictor.id2label))]
    colors = palette(len(names), names)
    if len(names) > PALETTE_SIZE:
        print(f"{len(names)} classes do not fit a palette PNG ({PALETTE_SIZE} colours): label maps are 16-bit PNGs")
    outputs = output_names(args.images)
    written, kept, failed = 0, 0, 0
    for path, name in outputs.items():
        labels_path = args.output_dir / f"{name}_labels.png"
        overlay_path = args.output_dir / f"{name}_overlay.png"
        existing = [p for p in (labels_path, overlay_path) if p.exists()]
        if existing and not args.overwrite:
            print(f"kept {', '.join(map(str, existing))} (exists; --overwrite replaces it)", file=sys.stderr)
            kept += 1
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image = decode_image(path)
        except (ValueError, FileNotFoundError) as error:
            print(f"skipped {path}: {error}", file=sys.stderr)
            failed += 1
            continue
        for warning in caught:
            print(f"note: {warning.message}", file=sys.stderr)
        labels = predictor.predict(image, tta)
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        label_image(labels, colors).save(labels_path)
        PIL.Image.fromarray(overlay(image, labels, colors, args.alpha)).save(overlay_path)
        written += 1
        present = ", ".join(f"{names[i]} {100 * np.mean(labels == i):.1f}%" for i in np.unique(labels))
        print(f"{path} -> {labels_path.name}: {present}")
    summary = f"wrote {written} label maps and overlays to {args.output_dir}"
    if kept:
        summary += f"; kept {kept} existing (--overwrite replaces them)"
    if failed:
        summary += f"; {failed} unreadable"
    duplicates = len(args.images) - len(outputs)
    if duplicates:
        summary += f"; {duplicates} repeated input(s) done once"
    print(summary)
    return 1 if failed and not written and not kept else 0


if __name__ == "__main__":
    sys.exit(main())
