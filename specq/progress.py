"""Progress bars for the command line: rate and ETA on a terminal, silent elsewhere."""
from __future__ import annotations

import sys


def progress_bar(**kwargs):
    """A tqdm bar on stderr when stderr is a terminal; a silent one (logs, pipes, CI) otherwise.

    Keyword arguments go to ``tqdm`` (``total``, ``unit``, ``desc``…); ``disable=True``
    silences it on a terminal too.
    """
    from tqdm import tqdm

    disable = kwargs.pop("disable", False) or not sys.stderr.isatty()
    return tqdm(disable=disable, file=sys.stderr, dynamic_ncols=True, **kwargs)
