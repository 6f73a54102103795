"""Segment images with a FaPN model: a label PNG (class ids, with the palette) and a colour overlay per image.

python scripts/predict.py --model outputs/demo --output-dir outputs/predictions photo1.jpg photo2.png
python scripts/predict.py --model outputs/demo --scales 0.75,1.0,1.25 --flip --window 512x512 big.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import PIL.Image

from fapn_hf.inference import SegmentationPredictor, TTAConfig, parse_scales
from fapn_hf.labels import palette
from fapn_hf.transforms import parse_size
from fapn_hf.visualization import overlay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/predictions"))
    parser.add_argument("--scales", type=parse_scales, default=(1.0,), help="comma-separated TTA scales")
    parser.add_argument("--flip", action="store_true", help="also average the horizontally flipped prediction")
    parser.add_argument("--window", type=parse_size, default=None, help="sliding-window size HxW")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    parser.add_argument("--device", default=None)
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)

    predictor = SegmentationPredictor.from_pretrained(args.model, args.device, args.trust_remote_code)
    names = [predictor.id2label[i] for i in range(len(predictor.id2label))]
    colors = palette(len(names), names)
    tta = TTAConfig(scales=args.scales, flip=args.flip, window=args.window)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.images:
        try:
            with PIL.Image.open(path) as opened:
                image = np.array(opened.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as error:
            print(f"skipped {path}: not a readable image ({error})", file=sys.stderr)
            failures += 1
            continue
        labels = predictor.predict(image, tta)
        label_png = PIL.Image.fromarray(labels.astype(np.uint8))
        label_png.putpalette(colors.flatten().tolist())  # an "L" image with a palette becomes "P"
        label_png.save(args.output_dir / f"{path.stem}_labels.png")
        PIL.Image.fromarray(overlay(image, labels, colors, args.alpha)).save(
            args.output_dir / f"{path.stem}_overlay.png"
        )
        present = ", ".join(f"{names[i]} {100 * np.mean(labels == i):.1f}%" for i in np.unique(labels))
        print(f"{path}: {present}")
    print(f"wrote {len(args.images) - failures} label maps and overlays to {args.output_dir}")
    return 1 if failures == len(args.images) else 0


if __name__ == "__main__":
    sys.exit(main())
