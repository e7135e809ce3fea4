"""``python -m benchmarks.serving_bench``: see the package docstring."""

import sys

from benchmarks.serving_bench.cli import main

sys.exit(main())
