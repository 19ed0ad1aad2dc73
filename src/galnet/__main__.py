"""``python -m galnet``: the galnet command line (see :mod:`galnet.cli`)."""

from galnet.cli import main

raise SystemExit(main())
