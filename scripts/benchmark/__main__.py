"""`python -m benchmark` (what scripts/benchmark.sh runs): see `cli` and `--help`."""

import sys

from .cli import main

sys.exit(main())
