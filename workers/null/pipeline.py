"""The null pipelines' runner: a batch is packed as a network would need it, then answered with zeros."""
from __future__ import annotations

from typing import Any

import numpy as np

from workers import row as result_row
from workers.null.spec import NULL_APOGEE, NULL_BOSS
from workers.pipeline import Options, Pipeline
from workers.spectrum import Spectrum

NULL_MODEL_SHA = "0" * 64  # no weights: every null row is keyed to this one "model"


def pack(spectra: list[Spectrum]) -> np.ndarray:
    """A batch as a device takes it: one contiguous float32 array (spectra, 2, pixels).

    Flux and its inverse variance (or error) of each spectrum, zero-padded to the longest:
    the host-side work every network's batch needs before its copy to a device.
    """
    width = max((s.flux.size for s in spectra), default=0)
    batch = np.zeros((len(spectra), 2, width), dtype=np.float32)
    for i, s in enumerate(spectra):
        noise = s.ivar if s.ivar is not None else s.error
        batch[i, 0, :s.flux.size] = s.flux
        if noise is not None:
            batch[i, 1, :noise.size] = noise
    return batch


class NullPipeline(Pipeline):
    """``null_boss``: packs the batch, returns a row of zeros per spectrum (no weights, no network)."""

    spec = NULL_BOSS
    model_sha256 = NULL_MODEL_SHA
    demo = False

    def __init__(self, weights=None, device: str | None = None, draws: int | None = None, seed: int | None = None,
                 batch_size: int | None = None, precision: str | None = None):
        super().__init__(weights, device, draws, seed, batch_size or 256, precision)
        self.device = device or "cpu"

    def _predict(self, spectra: list[Spectrum], options: Options) -> list[dict[str, Any]]:
        return self._finish(self._prepare(spectra, options))

    def _prepare(self, spectra: list[Spectrum], options: Options) -> np.ndarray:
        return pack(spectra)  # what a network's batch needs before the device

    def _finish(self, prepared: np.ndarray) -> list[dict[str, Any]]:
        zeros = {f.name: 0.0 for f in self.schema.all_fields if f.dtype == "float"}
        zeros["result_flags"] = 0
        return [result_row.values(self.schema, zeros) for _ in range(len(prepared))]


class NullApogeePipeline(NullPipeline):
    """``null_apogee``: the same, for APOGEE spectra."""

    spec = NULL_APOGEE
