"""Evaluate a FaPN model (folder or Hub id) on a segmentation data set: mIoU, per-class IoU, pixel accuracy and
boundary mIoU at 3/5/8/12 px, at each label's original resolution (the Trainer's evaluation scores the same way).

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
from fapn_hf.evaluation import evaluate_predictor
from fapn_hf.inference import SegmentationPredictor, TTAConfig, parse_scales
from fapn_hf.transforms import parse_size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--dataset", default="demo", help="'demo', a local folder, or a Hub data set id")
    parser.add_argument("--dataset-config", default=None)
    parser.add_argument("--dataset-revision", default=None)
    parser.add_argument("--split", default="validation", help="split of the source to evaluate (it must exist)")
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=None,
        help="evaluate this fraction held out of 'train' instead, as train.py's --validation_fraction does",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --validation-fraction (train.py's --seed)")
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
    try:
        predictor = SegmentationPredictor.from_pretrained(args.model, args.device, args.trust_remote_code)
        config = predictor.model.config
        spec = LabelSpec(config.num_labels, config.semantic_loss_ignore_index, args.label_mapping, args.reduce_labels)
        held_out = args.validation_fraction is not None
        splits = load_segmentation_dataset(
            args.dataset,
            config_name=args.dataset_config,
            revision=args.dataset_revision,
            image_column=args.image_column,
            label_column=args.label_column,
            train_split="train" if held_out else None,
            validation_split=args.split,
            validation_fraction=args.validation_fraction,
            seed=args.seed,
        )
        split_name = f"{args.validation_fraction:.0%} of train, seed {args.seed}" if held_out else args.split
        split = splits["validation"]
        if args.max_samples is not None:
            split = split.select(range(min(args.max_samples, len(split))))
        split, report = check_samples(split, spec, args.bad_sample_policy, split_name)
        tta = TTAConfig(scales=args.scales, flip=args.flip, window=args.window)
        started = time.perf_counter()
        samples = SegmentationDataset(split, spec, None, predictor.processor, random=False)
        scores = evaluate_predictor(predictor, samples.samples(), tta, spec.ignore_index)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from error
    elapsed = time.perf_counter() - started
    per_class = scores.pop("per_class_iou")
    num_images = scores.pop("num_images")
    print(f"{args.model} on {args.dataset} ({split_name}, {num_images} images, {elapsed:.1f} s)")
    print(f"TTA: scales {list(tta.scales)}, flip {tta.flip}, window {tta.window}")
    for key, value in scores.items():
        print(f"  {key:22s} {value:.4f}")
    print("  per-class IoU:")
    for name, value in per_class.items():
        print(f"    {name:20s} {value:.4f}")
    if report.num_skipped:
        print(f"  skipped {report.num_skipped} unusable samples")
    if args.output is not None:
        result = {
            **scores,
            "per_class_iou": per_class,
            "num_images": num_images,
            "split": split_name,
            "data": report.to_dict(),
            "tta": {"scales": list(tta.scales), "flip": tta.flip, "window": tta.window},
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
