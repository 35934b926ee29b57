"""`python -m tncompiler` runs the `tnc` command line."""

import sys

from tncompiler.cli import main

sys.exit(main())
