"""Build a FaPN preset and write a Hub-ready folder (config, safetensors weights, processor config, remote code).

    python scripts/create_model.py --preset fapn-r50 --labels cityscapes --output-dir outputs/fapn-r50-cityscapes
    python scripts/create_model.py --preset maskformer-fapn-r101-cocostuff --output-dir outputs/maskformer-fapn-r101

The folder loads with `AutoModelForSemanticSegmentation.from_pretrained(folder)` (MaskFormer presets: also
`AutoModelForUniversalSegmentation`) after `import fapn_hf`, or with
`trust_remote_code=True` without it, and with `pipeline("image-segmentation", model=folder)`. The script reloads
what it wrote and checks that the reloaded model reproduces the original's logits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import fapn_hf
from fapn_hf import (
    MASKFORMER_PRESETS,
    PRESETS,
    FaPNForSemanticSegmentation,
    MaskFormerFaPNForInstanceSegmentation,
    preset_config,
    preset_image_processor,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset", default="fapn-r50", choices=sorted([*PRESETS, *MASKFORMER_PRESETS]), help="model preset"
    )
    parser.add_argument(
        "--labels",
        default=None,
        help="label set: 'cityscapes', 'ade20k', 'cocostuff', or comma-separated class names (e.g. "
        "'background,road,car'); default: the preset's own (cityscapes for the semantic FPN presets)",
    )
    parser.add_argument("--output-dir", required=True, type=Path, help="folder to write (created if missing)")
    parser.add_argument(
        "--pretrained-backbone",
        action="store_true",
        help="start from timm's ImageNet weights (downloads them unless they are in the Hugging Face cache)",
    )
    parser.add_argument("--backbone-weights", type=Path, help="local timm checkpoint to load into the backbone")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    return parser.parse_args(argv)


def parse_labels(value: str) -> str | list[str]:
    return value if "," not in value else [name.strip() for name in value.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    maskformer = args.preset in MASKFORMER_PRESETS
    labels = parse_labels(args.labels) if args.labels else (None if maskformer else "cityscapes")
    started = time.perf_counter()
    if maskformer and (args.pretrained_backbone or args.backbone_weights):
        raise SystemExit("--pretrained-backbone/--backbone-weights are not supported for MaskFormer presets yet")
    config = preset_config(args.preset, labels)
    model_class = MaskFormerFaPNForInstanceSegmentation if maskformer else FaPNForSemanticSegmentation
    if args.backbone_weights is not None and not args.backbone_weights.is_file():
        raise SystemExit(f"--backbone-weights: no such file: {args.backbone_weights}")
    if args.pretrained_backbone or args.backbone_weights:
        # The explicit step that loads timm's weights (a constructor never does).
        model = model_class.from_pretrained_backbone(config, args.backbone_weights).eval()
    else:
        model = model_class(config).eval()
    processor = preset_image_processor(labels, preset=args.preset)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)

    # Reload through the Auto class and check that the folder reproduces the model.
    reloaded = model_class.from_pretrained(args.output_dir).eval()
    probe = torch.randn(1, 3, 96, 160)
    with torch.inference_mode():
        difference = (model(probe)[0] - reloaded(probe)[0]).abs().max().item()
    if difference > 1e-4:
        raise SystemExit(f"the reloaded model differs from the original (max |logit diff| = {difference:.3g})")

    num_parameters = sum(p.numel() for p in model.parameters()) / 1e6
    pretrained = bool(args.pretrained_backbone or args.backbone_weights)
    print(f"fapn_hf {fapn_hf.__version__}: {args.preset}, {config.num_labels} labels, {num_parameters:.2f} M params")
    print(f"backbone: {config.backbone_config.backbone}, pretrained: {pretrained}")
    print(f"wrote {args.output_dir}/ in {time.perf_counter() - started:.1f} s:")
    for path in sorted(args.output_dir.iterdir()):
        if path.is_file():
            print(f"  {path.name:28s} {path.stat().st_size / 1e6:9.2f} MB")
    print(f"reload check: max |output difference| {difference:.1e}")
    print(
        f"load it with: {'AutoModelForUniversalSegmentation' if maskformer else 'AutoModelForSemanticSegmentation'}"
        f'.from_pretrained("{args.output_dir}", trust_remote_code=True)'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
