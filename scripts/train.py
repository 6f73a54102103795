"""Train FaPN on a `datasets` segmentation set with the Hugging Face Trainer: the `fapn-train` command
(`fapn_hf.train.main`), kept as a script for checkouts without an installed package.

    python scripts/train.py recipes/demo.yaml --max_steps 50 --output_dir outputs/quick
    torchrun --nproc_per_node 8 scripts/train.py recipes/ade20k_fapn_r50.yaml

See `fapn_hf/train.py` and `--help` for the recipe and its arguments.
"""

from __future__ import annotations

import sys

from fapn_hf.train import main

if __name__ == "__main__":
    sys.exit(main())
