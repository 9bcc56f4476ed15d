"""What every pipeline offers the engine: a warm model that turns spectra into result rows."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from workers.schema import ResultSchema
from workers.spectrum import Spectrum

# The model_sha256 of a row written while no model could be loaded. It must not be
# NULL (NULLs never collide in the (spectrum_key, model_sha256) key, so retries would
# add rows) and must not look like a hash: no weights produced the row.
UNLOADED_MODEL_SHA = "unloaded"


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


class UnloadedPipeline(Pipeline):
    """Stand-in for a pipeline whose model could not be loaded: schema and flags, no model.

    It lets the runner write the flagged row every spectrum is owed when the weights are
    corrupt, do not fit the network, or keep failing to load. The rows carry
    ``model_sha256 = UNLOADED_MODEL_SHA`` and ``demo_weights = False``: no weights, demo
    or published, produced them.

    Parameters
    ----------
    name : str
        The pipeline's name (``"bossnet"``, ``"astronn_dist"``).
    schema : ResultSchema
        The pipeline's declared result schema.
    instrument : str, optional
        The spectrograph the pipeline reads.
    """

    model_sha256 = UNLOADED_MODEL_SHA
    demo = False

    def __init__(self, name: str, schema: ResultSchema, instrument: str = ""):
        super().__init__()
        self.name = name
        self.schema = schema
        self.exception_flag = schema.exception_flag
        self.instrument = instrument
        schema.flag(self.exception_flag)  # fail here, not on the first row, if the flag is wrong

    def predict(self, spectra: Sequence[Spectrum]) -> list[dict[str, Any]]:
        """Never predicts: there is no model.

        Raises
        ------
        RuntimeError
            Always.
        """
        raise RuntimeError(f"{self.name}: no model is loaded")
