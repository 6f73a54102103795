"""The paper's claim in miniature: FPN vs FaPN, same backbone, budget and seeds, on the built-in demo data.

Trains both necks with a demo recipe for every seed and prints the task's scores side by side, as mean +- standard
deviation over seeds: mIoU, boundary mIoU (3/5/8/12 px and mean) and the thin ("wire") and small ("dot") classes'
IoU for semantic segmentation; box and mask AP for Faster / Mask R-CNN; PQ (all, things, stuff) for Panoptic FPN.
Everything else (data, augmentation, head, optimiser, schedule) is identical: the two models differ only in
`use_fam` / `use_fsm`.

    python scripts/reproduce_fpn_vs_fapn.py                              # 3 seeds x 2 models, demo recipe
    python scripts/reproduce_fpn_vs_fapn.py --seeds 0 --max-steps 100    # a quick look
    python scripts/reproduce_fpn_vs_fapn.py --recipe recipes/demo_detection.yaml --seeds 0,1   # Mask R-CNN
    python scripts/reproduce_fpn_vs_fapn.py --recipe recipes/demo_detection.yaml --preset fapn-panoptic-fpn-demo
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from fapn_hf.training.args import parse_arguments
from fapn_hf.training.run import run_training

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"FPN": {"use_fam": False, "use_fsm": False}, "FaPN": {"use_fam": True, "use_fsm": True}}
# The scores of each task, in table order: (metric key, column title); a task shows those its runs report.
COLUMNS = (
    ("eval_mean_iou", "mIoU"),
    ("eval_boundary_iou_3px", "bIoU 3px"),
    ("eval_boundary_iou_5px", "bIoU 5px"),
    ("eval_boundary_iou_8px", "bIoU 8px"),
    ("eval_boundary_iou_12px", "bIoU 12px"),
    ("eval_boundary_mean_iou", "bIoU mean"),
    ("eval_iou_wire", "IoU wire"),
    ("eval_iou_dot", "IoU dot"),
    ("eval_bbox_AP", "box AP"),
    ("eval_bbox_AP50", "box AP50"),
    ("eval_bbox_AP75", "box AP75"),
    ("eval_segm_AP", "mask AP"),
    ("eval_segm_AP50", "mask AP50"),
    ("eval_segm_AP75", "mask AP75"),
    ("eval_PQ", "PQ"),
    ("eval_PQ_th", "PQ things"),
    ("eval_PQ_st", "PQ stuff"),
    ("eval_SQ", "SQ"),
    ("eval_RQ", "RQ"),
)
HEADLINE = ("eval_mean_iou", "eval_bbox_AP", "eval_segm_AP", "eval_PQ")


def summarise(values: list[float], key: str) -> str:
    scale, digits = (1, 0) if key == "train_seconds" else (100, 1)
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO_ROOT / "recipes" / "demo.yaml")
    parser.add_argument("--preset", default=None, help="the model preset (default: the recipe's)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--max-steps", type=int, default=None, help="override the recipe's budget")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/fpn-vs-fapn"))
    args = parser.parse_args(argv)

    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for seed in seeds:
        for name, switches in VARIANTS.items():
            overrides = {
                **switches, "seed": seed, "output_dir": str(args.output_dir / f"{name.lower()}-seed{seed}"),
                "eval_strategy": "no", "save_strategy": "no", "num_visualizations": 2, "overwrite_output_dir": True,
            }  # fmt: skip
            if args.max_steps is not None:
                overrides["max_steps"] = args.max_steps
            if args.preset is not None:
                overrides["preset"] = args.preset
            model_args, data_args, training_args = parse_arguments([], recipe=args.recipe, **overrides)
            started = time.perf_counter()
            run = run_training(model_args, data_args, training_args)
            scores = {k: float(v) for k, v in run.metrics["eval"].items() if isinstance(v, (int, float))}
            scores["train_seconds"] = time.perf_counter() - started
            results[name].append(scores)
            headline = ", ".join(f"{key[5:]} {scores[key]:.4f}" for key in HEADLINE if key in scores)
            print(f"seed {seed} {name}: {headline} ({scores['train_seconds']:.0f} s)", flush=True)

    columns = [(key, title) for key, title in COLUMNS if key in results["FaPN"][0]] + [("train_seconds", "time (s)")]
    header = "| model | " + " | ".join(title for _, title in columns) + " |"
    rule = "|---" * (len(columns) + 1) + "|"
    rows = [
        f"| {name} | " + " | ".join(summarise([r[key] for r in runs], key) for key, _ in columns) + " |"
        for name, runs in results.items()
    ]

    def mean(name: str, key: str) -> float:
        return statistics.mean(run[key] for run in results[name])

    deltas = "| FaPN - FPN | " + " | ".join(
        f"{mean('FaPN', k) - mean('FPN', k):+.0f}"
        if k == "train_seconds"
        else f"{100 * (mean('FaPN', k) - mean('FPN', k)):+.1f}"
        for k, _ in columns
    )
    deltas += " |"
    steps = args.max_steps or "recipe"
    table = "\n".join([header, rule, *rows, deltas])
    preset = args.preset or "the recipe's preset"
    print(f"\nDemo data, {args.recipe.name}, {preset}, seeds {seeds}, max_steps {steps} (scores in %, mean ± std "
          f"over seeds; time: training and evaluation):\n{table}")  # fmt: skip
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.json").write_text(json.dumps({"seeds": seeds, "runs": results}, indent=2) + "\n")
    (args.output_dir / "results.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
