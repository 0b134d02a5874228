"""``python -m exporter.simulator``: the standalone simulator (see cli.py)."""

import sys

from .cli import main

sys.exit(main())
