"""What every pipeline offers the engine: a warm model that turns spectra into result rows."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from workers.schema import ResultSchema
from workers.spectrum import Spectrum


class Pipeline(ABC):
    """A loaded model plus its pre- and post-processing.

    Subclasses set the class attributes and implement :meth:`predict`. One instance is
    built per worker process and reused for every task (the warm model).

    Parameters
    ----------
    weights : path-like, optional
        Published weights (file or chunk folder). None → the seeded demo weights.
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``…; None → CUDA when available.
    draws : int, optional
        Monte Carlo draws (BossNet noise draws; AstroNN dropout passes).
    seed : int, optional
        Makes the draws reproducible: each spectrum's draws depend only on the seed and
        the spectrum's identity, never on which batch it came in.
    """

    name: str = ""
    schema: ResultSchema
    instrument: str = ""
    default_draws: int = 0
    exception_flag: str = ""  # the bit set on a row whose spectrum failed

    model_sha256: str
    demo: bool

    def __init__(self, weights=None, device: str | None = None, draws: int | None = None,
                 seed: int | None = None, batch_size: int | None = None):
        self.draws = self.default_draws if draws is None else int(draws)
        self.seed = seed
        self.batch_size = batch_size

    def refuse_reason(self, spectrum: Spectrum) -> str | None:
        """Why this pipeline cannot take ``spectrum`` (None when it can)."""
        if spectrum.instrument != self.instrument:
            return f"{self.name} needs a {self.instrument.upper()} spectrum, got {spectrum.instrument.upper()}"
        return None

    @abstractmethod
    def predict(self, spectra: Sequence[Spectrum]) -> list[dict[str, Any]]:
        """One dict per spectrum with every schema field and ``result_flags``."""

    def failed_row(self, reason: str) -> dict[str, Any]:
        """The row of a spectrum that could not be processed: NaNs, the failure bit, the reason."""
        row: dict[str, Any] = {}
        for f in self.schema.all_fields:
            row[f.name] = np.nan if f.dtype == "float" else None
        row["result_flags"] = self.schema.flag(self.exception_flag).value
        row["error"] = reason
        return row
