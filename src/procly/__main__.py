"""``python -m procly ...``: the ``procly`` command line (see :mod:`procly.cli`)."""

import sys

from procly.cli import main

sys.exit(main())
