"""``python -m procly``: the ``procly`` command (see :mod:`procly.cli`)."""

import sys

from procly.cli import main

if __name__ == "__main__":
    sys.exit(main())
