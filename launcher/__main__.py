"""`python -m launcher` is the same as the `agent-run` console script."""

from launcher.cli import main

raise SystemExit(main())
