"""``python -m benchmarks``: see benchmarks/suite.py (targets live there, importable by children)."""

import sys

from benchmarks.suite import main

sys.exit(main())
