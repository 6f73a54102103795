"""Evaluate a FaPN model (folder or Hub id) on a segmentation data set: mIoU, per-class IoU, pixel accuracy and
boundary mIoU at 3/5/8/12 px, at each image's original resolution.

    python scripts/evaluate.py --model outputs/demo --dataset demo
    python scripts/evaluate.py --model outputs/demo --dataset demo --scales 0.75,1.0,1.25 --flip
    python scripts/evaluate.py --model ORG/fapn-r50-cityscapes --dataset /data/cityscapes --label-mapping cityscapes \
        --window 1024x1024 --output metrics.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fapn_hf.data import LabelSpec, SegmentationDataset, check_samples, load_segmentation_dataset
from fapn_hf.inference import SegmentationPredictor, TTAConfig, parse_scales
from fapn_hf.metrics import SegmentationMetrics
from fapn_hf.transforms import parse_size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--dataset", default="demo", help="'demo', a local folder, or a Hub data set id")
    parser.add_argument("--dataset-config", default=None)
    parser.add_argument("--dataset-revision", default=None)
    parser.add_argument("--split", default="validation", help="split of the source to evaluate")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--label-mapping", default=None, help="raw id mapping, e.g. 'cityscapes'")
    parser.add_argument("--reduce-labels", action="store_true", help="0 -> ignore, others minus 1 (ADE20K)")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--bad-sample-policy", default="fail", choices=("fail", "skip"))
    parser.add_argument(
        "--scales",
        type=parse_scales,
        default=(1.0,),
        help="comma-separated TTA scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75",
    )
    parser.add_argument("--flip", action="store_true", help="also average the horizontally flipped prediction")
    parser.add_argument("--window", type=parse_size, default=None, help="sliding-window size HxW for large images")
    parser.add_argument("--device", default=None)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--output", type=Path, default=None, help="write the metrics as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    predictor = SegmentationPredictor.from_pretrained(args.model, args.device, args.trust_remote_code)
    config = predictor.model.config
    spec = LabelSpec(config.num_labels, config.semantic_loss_ignore_index, args.label_mapping, args.reduce_labels)
    splits = load_segmentation_dataset(
        args.dataset,
        config_name=args.dataset_config,
        revision=args.dataset_revision,
        image_column=args.image_column,
        label_column=args.label_column,
        validation_split=args.split,
    )
    split = splits["validation"]
    if args.max_samples is not None:
        split = split.select(range(min(args.max_samples, len(split))))
    split, report = check_samples(split, spec, args.bad_sample_policy, args.split)
    samples = SegmentationDataset(split, spec, None, predictor.processor.image_mean, predictor.processor.image_std)
    tta = TTAConfig(scales=args.scales, flip=args.flip, window=args.window)
    metrics = SegmentationMetrics(config.num_labels, spec.ignore_index, id2label=config.id2label)
    started = time.perf_counter()
    for index in range(len(samples)):
        image, labels = samples.load(index)
        metrics.update(predictor.predict(image, tta), labels)
    elapsed = time.perf_counter() - started
    scores = metrics.compute()
    per_class = scores.pop("per_class_iou")
    print(f"{args.model} on {args.dataset} ({args.split}, {len(samples)} images, {elapsed:.1f} s)")
    print(f"TTA: scales {list(tta.scales)}, flip {tta.flip}, window {tta.window}")
    for key, value in scores.items():
        print(f"  {key:22s} {value:.4f}")
    print("  per-class IoU:")
    for name, value in per_class.items():
        print(f"    {name:20s} {value:.4f}")
    if report.num_skipped:
        print(f"  skipped {report.num_skipped} unusable samples")
    if args.output is not None:
        result = {**scores, "per_class_iou": per_class, "num_images": len(samples), "data": report.to_dict(),
                  "tta": {"scales": list(tta.scales), "flip": tta.flip, "window": tta.window}}  # fmt: skip
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
