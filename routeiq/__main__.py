"""``python -m routeiq``: the ``routeiq`` command."""

import sys

from routeiq.cli import main

if __name__ == "__main__":
    sys.exit(main())
