"""`python -m fapn_hf COMMAND [ARGS]`: every fapn_hf command (`fapn_hf.cli.main`); `python -m fapn_hf --help`."""

import sys

from .cli import main

sys.exit(main())
