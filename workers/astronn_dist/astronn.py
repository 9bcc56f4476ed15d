"""astroNN, imported lazily and quietly: its APOGEE tools (no TensorFlow) and its Gaia tools (TensorFlow).

Only processes that compute distances pay for ``astroNN.gaia`` (~4 s, ~700 MB resident).
"""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


@contextmanager
def _quiet_astronn_import():
    """Route the warnings astroNN raises on import (pkg_resources deprecation) to the log.

    TensorFlow's C++ start-up chatter (CUDA probing, CPU features) is turned down with
    ``TF_CPP_MIN_LOG_LEVEL`` unless the deployment set it.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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


def astronn_gaia():
    """``astroNN.gaia`` and astroNN's magic number, imported once per process.

    This loads TensorFlow (~4 s, ~700 MB resident), hence the lazy import.
    """
    if "gaia" not in _ASTRONN:
        with _quiet_astronn_import():
            import astroNN.config
            import astroNN.gaia
        _ASTRONN["gaia"] = astroNN.gaia
        # The magic number is user-configurable (~/.astroNN/config.ini); -9999 by default.
        _ASTRONN["magic"] = float(astroNN.config.MAGIC_NUMBER)
    return _ASTRONN["gaia"]


def magic_number() -> float:
    """astroNN's magic number for missing values (user-configurable; -9999 by default)."""
    astronn_gaia()
    return _ASTRONN["magic"]
