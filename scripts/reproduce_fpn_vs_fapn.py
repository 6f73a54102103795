"""The paper's claim in miniature: FPN vs FaPN, same backbone, budget and seeds, on the built-in demo data.

Trains both necks with the demo recipe for every seed and prints mIoU and boundary mIoU (3/5/8/12 px and mean)
side by side, as mean +- standard deviation over seeds, plus the IoU of the thin ("wire") and small ("dot")
classes. Everything else (data, augmentation, head, optimiser, schedule) is identical: the two models differ only
in `use_fam` / `use_fsm`.

    python scripts/reproduce_fpn_vs_fapn.py                              # 3 seeds x 2 models, demo recipe
    python scripts/reproduce_fpn_vs_fapn.py --seeds 0 --max-steps 100    # a quick look
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
COLUMNS = (
    ("eval_mean_iou", "mIoU"),
    ("eval_boundary_iou_3px", "bIoU 3px"),
    ("eval_boundary_iou_5px", "bIoU 5px"),
    ("eval_boundary_iou_8px", "bIoU 8px"),
    ("eval_boundary_iou_12px", "bIoU 12px"),
    ("eval_boundary_mean_iou", "bIoU mean"),
    ("eval_iou_wire", "IoU wire"),
    ("eval_iou_dot", "IoU dot"),
)


def summarise(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO_ROOT / "recipes" / "demo.yaml")
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
            model_args, data_args, training_args = parse_arguments([], recipe=args.recipe, **overrides)
            started = time.perf_counter()
            run = run_training(model_args, data_args, training_args)
            scores = {k: float(v) for k, v in run.metrics["eval"].items() if isinstance(v, (int, float))}
            scores["train_seconds"] = time.perf_counter() - started
            results[name].append(scores)
            print(f"seed {seed} {name}: mIoU {scores['eval_mean_iou']:.4f}, boundary mIoU "
                  f"{scores['eval_boundary_mean_iou']:.4f} ({scores['train_seconds']:.0f} s)", flush=True)  # fmt: skip

    header = "| model | " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 1) + "|"
    rows = [
        f"| {name} | " + " | ".join(summarise([r[key] for r in runs]) for key, _ in COLUMNS) + " |"
        for name, runs in results.items()
    ]

    def mean(name: str, key: str) -> float:
        return statistics.mean(run[key] for run in results[name])

    deltas = "| FaPN - FPN | " + " | ".join(f"{100 * (mean('FaPN', k) - mean('FPN', k)):+.1f}" for k, _ in COLUMNS)
    deltas += " |"
    steps = args.max_steps or "recipe"
    table = "\n".join([header, rule, *rows, deltas])
    print(f"\nDemo data, seeds {seeds}, max_steps {steps} (scores in %, mean ± std over seeds):\n{table}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.json").write_text(json.dumps({"seeds": seeds, "runs": results}, indent=2) + "\n")
    (args.output_dir / "results.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
