"""Convert an authors' detectron2 checkpoint into a Hub-ready FaPN folder (the same as the `fapn-convert` command).

    python scripts/convert_original_checkpoint.py --checkpoint model_final.pth \
        --model fapn-r50-pointrend-cityscapes --output-dir outputs/fapn-r50-pointrend-cityscapes

See `fapn_hf/convert_original.py` for what it checks and writes; `--help` lists the models.
"""

from __future__ import annotations

import sys

from fapn_hf.convert_original import main

if __name__ == "__main__":
    sys.exit(main())
