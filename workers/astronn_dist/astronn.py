"""astroNN's APOGEE tools (``astroNN.apogee``, no TensorFlow), imported lazily and quietly.

``astroNN.gaia`` is never imported: it loads TensorFlow (~4 s, ~700 MB resident); the
distance arithmetic is :func:`workers.astronn_dist.photometry.fakemag_distance`.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


@contextmanager
def _quiet_astronn_import():
    """Keep astroNN's import-time warnings (pkg_resources deprecation) out of the user's terminal: to the DEBUG log."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        log.debug("astroNN import: %s: %s", w.category.__name__, w.message)


_ASTRONN: dict[str, Any] = {}


def astronn_apogee():
    """``astroNN.apogee`` (no TensorFlow), imported once."""
    if "apogee" not in _ASTRONN:
        with _quiet_astronn_import():
            import astroNN.apogee
        _ASTRONN["apogee"] = astroNN.apogee
    return _ASTRONN["apogee"]
