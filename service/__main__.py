"""``python -m service`` is the ``hookserve`` command."""

import sys

from service.cli import main

sys.exit(main())
