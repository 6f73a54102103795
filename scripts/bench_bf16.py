"""bf16 against float32 (issue 22): a trained model's mIoU and label agreement on the demo validation images through
`SegmentationPredictor(precision=...)`, and FaPN-R50's forward time at 1x3x256x512 (random weights, DCN offsets of
about a pixel), the two precisions interleaved.

    python scripts/bench_bf16.py outputs/demo      # after `make demo`
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from fapn_hf import FAMILIES, SegmentationPredictor, preset_config
from fapn_hf.benchmark.run import exercise_offsets, logits_agreement
from fapn_hf.inference.evaluation import evaluate
from fapn_hf.tasks.semantic.demo_data import VALIDATION_START_INDEX, render_sample


def main() -> None:
    folder = sys.argv[1]
    p32 = SegmentationPredictor.from_pretrained(folder, device="cpu")
    p16 = SegmentationPredictor.from_pretrained(folder, device="cpu", precision="bfloat16")
    opts = {"num_train": 0, "num_validation": 48, "size": (128, 128)}
    m32 = evaluate(p32, "demo", demo_options=opts)["mean_iou"]
    m16 = evaluate(p16, "demo", demo_options=opts)["mean_iou"]
    same = total = 0
    for i in range(48):
        image, _ = render_sample(VALIDATION_START_INDEX + i, seed=0, size=(128, 128))
        a, b = p32.predict(image), p16.predict(image)
        same += int((a == b).sum())
        total += a.size
    print(
        f"demo model ({folder}): mIoU float32 {m32:.4f}, bfloat16 {m16:.4f}; same label on {100 * same / total:.2f} % "
        f"of {total} pixels (48 validation images)"
    )

    torch.manual_seed(0)
    config = preset_config("fapn-r50", [f"class {i}" for i in range(19)])
    model = exercise_offsets(FAMILIES["fapn"].head_class(config).eval(), seed=1)
    x = torch.randn(1, 3, 256, 512)
    times = {"float32": [], "bfloat16": []}
    with torch.inference_mode():
        outs = {}
        for name in times:
            with torch.autocast("cpu", torch.bfloat16, enabled=name == "bfloat16"):
                outs[name] = model(pixel_values=x).logits.float()
        for _ in range(5):
            for name in times:
                t = time.perf_counter()
                with torch.autocast("cpu", torch.bfloat16, enabled=name == "bfloat16"):
                    model(pixel_values=x)
                times[name].append(1000 * (time.perf_counter() - t))
    agree = logits_agreement(outs["float32"], outs["bfloat16"])["label_agreement"]
    t32, t16 = statistics.median(times["float32"]), statistics.median(times["bfloat16"])
    print(
        f"FaPN-R50 1x3x256x512, {torch.get_num_threads()} threads: float32 {t32:.0f} ms, bf16 autocast {t16:.0f} ms "
        f"({t32 / t16:.2f}x faster); same label on {100 * agree:.2f} % of pixels (random weights)"
    )


if __name__ == "__main__":
    main()
