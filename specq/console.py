"""What the commands print the same way: the demo-weights banner."""
from __future__ import annotations

import sys

DEMO_BANNER = ("DEMO WEIGHTS: seeded random weights, not the published model. "
               "Values are for trying specq out, not for science.")


def banner(text: str) -> None:
    """``text`` framed on stderr, where it stands out from the results on stdout."""
    line = "=" * min(100, len(text) + 4)
    print(f"{line}\n  {text}\n{line}", file=sys.stderr)
