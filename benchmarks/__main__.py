"""``python -m benchmarks ARGS`` is ``tether bench ARGS``."""

import sys

from tether.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
