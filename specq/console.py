"""What the commands print the same way: the demo-weights banner, the precision note."""
from __future__ import annotations

import sys

DEMO_BANNER = ("DEMO WEIGHTS: seeded random weights, not the published model. "
               "Values are for trying specq out, not for science.")


def banner(text: str) -> None:
    """``text`` framed on stderr, where it stands out from the results on stdout."""
    line = "=" * min(100, len(text) + 4)
    print(f"{line}\n  {text}\n{line}", file=sys.stderr)


def precision_options(name: str, precision: str | None) -> dict:
    """``{"precision": precision}`` when pipeline ``name`` offers it, else ``{}`` and a note on stderr.

    ``specq run`` and ``specq bench`` take one ``--precision`` for every pipeline they run.
    """
    from workers import registry

    if precision and precision in registry.get(name).precisions:
        return {"precision": precision}
    if precision not in (None, "float32"):
        print(f"note: {name} runs in float32 (it offers no {precision} precision)", file=sys.stderr)
    return {}
