"""``python -m gearshift``: the same as the ``gearshift`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
