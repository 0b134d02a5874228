"""``python -m exporter``."""

import sys

from .cli import main

if __name__ == "__main__":  # the poll worker process (spawn) imports this module as well
    sys.exit(main())
