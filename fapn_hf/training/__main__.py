"""`python -m fapn_hf.training RECIPE [ARGS]` (also under `torchrun` / `accelerate launch`): `fapn-train`."""

import sys

from .run import main

sys.exit(main())
