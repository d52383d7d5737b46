"""`python -m verifier`: see verifier.cli."""

import sys

from verifier.cli import main

sys.exit(main())
