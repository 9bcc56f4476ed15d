"""``python -m specq.cli``: the ``specq`` command."""
import sys

from specq.cli import main

sys.exit(main())
