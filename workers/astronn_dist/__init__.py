"""AstroNN distances: APOGEE coadded spectra → Ks pseudo-luminosity → distance.

Importing the package loads only the schema (numpy); the pipeline, network and baseline
(torch, astroNN) load on first attribute access, so producers and the result store can
import ``workers.astronn_dist`` cheaply.
"""
from __future__ import annotations

import importlib

from workers.astronn_dist.schema import ASTRONN_DIST_SCHEMA

_LAZY = {
    "AstroNNDistPipeline": "workers.astronn_dist.pipeline",
    "summarize_passes": "workers.astronn_dist.pipeline",
    "ApogeeDistBCNN": "workers.astronn_dist.network",
    "load_astronn_dist": "workers.astronn_dist.network",
    "demo_weights_path": "workers.astronn_dist.network",
    "SourceCatalog": "workers.astronn_dist.photometry",
    "Photometry": "workers.astronn_dist.photometry",
    "baseline_predict": "workers.astronn_dist.baseline",
}

__all__ = ["ASTRONN_DIST_SCHEMA", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
