"""``python -m specq``: the ``specq`` command."""
from specq.cli import main

raise SystemExit(main())
