"""``python -m benchmarks.soak``: see the package docstring."""

import sys

from benchmarks.soak.cli import main

sys.exit(main())
