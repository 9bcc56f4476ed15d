"""astroNN, imported lazily and quietly: its APOGEE tools (no TensorFlow) and its Gaia tools (TensorFlow).

Only processes that compute distances pay for ``astroNN.gaia`` (~4 s, ~700 MB resident).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


# TensorFlow's start-up lines: "I0000 00:00:… port.cc:153] oneDNN custom operations…",
# "W…", and absl's "WARNING: All log messages before absl::InitializeLog()…".
_TF_STARTUP_LINE = re.compile(r"^([IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\] |WARNING: All log messages before absl::)")


@contextmanager
def _quiet_astronn_import():
    """Keep astroNN's and TensorFlow's import-time noise out of the user's terminal.

    Python warnings (pkg_resources deprecation) go to the log at DEBUG. TensorFlow's C++
    start-up lines (oneDNN, CUDA probing, CPU features) are written to file descriptor 2
    before TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` (TF 2.21 prints them once per native
    library, so twice), so the descriptor is pointed at a temporary file during the
    import: those lines go to the DEBUG log, anything else (an error) back to stderr.
    ``TF_CPP_MIN_LOG_LEVEL`` (unless the deployment set it) quietens what TF logs later.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
    for w in caught:
        log.debug("astroNN import: %s: %s", w.category.__name__, w.message)
    for line in text.splitlines():
        if _TF_STARTUP_LINE.match(line):
            log.debug("TensorFlow start-up: %s", line)
        elif line.strip():
            print(line, file=sys.stderr)


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
