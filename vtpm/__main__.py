"""`python -m vtpm`: the vtpm command line."""

from vtpm.cli import main

raise SystemExit(main())
