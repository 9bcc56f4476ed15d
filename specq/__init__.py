"""specq from Python and from the command line.

``specq.predict``, ``specq.results`` and ``specq.submit`` (:mod:`specq.api`); the first two
return astropy tables with the exported columns, which ``specq.write_results`` writes as
``specq results export`` does. ``specq`` (the CLI), bench, demo and status sit beside them.
Importing this package is cheap: each call imports what it needs when it runs (the networks
load on the first ``predict``).
"""
from workers import __version__

__all__ = ["SpecqError", "__version__", "predict", "results", "submit", "write_results"]
_API = {"SpecqError", "predict", "results", "submit", "write_results"}


def __getattr__(name: str):
    if name in _API:
        from specq import api

        return getattr(api, name)
    raise AttributeError(f"module 'specq' has no attribute {name!r}")
