"""`python -m igvm`: the igvm command line."""

import sys

from igvm.cli import main

sys.exit(main())
