"""The straightforward way to run BossNet, kept as the yardstick for benchmarks and checks.

One spectrum at a time: numpy preprocessing, a forward pass of the noise-free spectrum,
then for each draw ``np.interp`` in a Python loop and its own forward pass, all with the
direct ``conv1d`` convolutions. Same weights, same noise (:func:`~workers.bossnet.pipeline.draw_noise`)
and same output conversion as :class:`~workers.bossnet.pipeline.BossNetPipeline`, so the two
give the same numbers to float32 rounding.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np

from workers.bossnet.pipeline import convert_outputs, draw_noise, rows_from_columns, spectrum_arrays
from workers.bossnet.preprocess import GRID, clean_flux, error_from_ivar, interpolate, log_scale
from workers.spectrum import Spectrum


@contextlib.contextmanager
def _direct(model) -> Iterator[None]:
    previous = model.conv_impl
    model.conv_impl = "direct"
    try:
        yield
    finally:
        model.conv_impl = previous


def baseline_predict(model, spectra: Sequence[Spectrum], draws: int, seed: int | None,
                     batch_draws: bool = False) -> list[dict[str, Any]]:
    """BossNet results the straightforward way (see the module docstring).

    Parameters
    ----------
    model : BossNet
        Loaded network (its ``conv_impl`` is set to ``"direct"`` for the call).
    spectra : sequence of Spectrum
    draws : int
        Noise draws per spectrum.
    seed : int or None
        As for the pipeline: the same seed gives the same noise.
    batch_draws : bool
        False: one forward pass per draw. True: the draws of a spectrum in one forward
        pass, as the published code does.

    Returns
    -------
    list of dict
        One row per spectrum (fields, ``result_flags``, ``flag_warn``, ``flag_bad``); a
        spectrum that cannot be processed gets ``{"error": reason}``.
    """
    import torch

    device = next(model.parameters()).device

    def forward(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        return model(t.reshape(-1, 1, t.shape[-1])).cpu().numpy()

    rows: list[dict[str, Any]] = []
    with torch.inference_mode(), _direct(model):
        for spectrum in spectra:
            arrays = spectrum_arrays(spectrum)
            if isinstance(arrays, str):
                rows.append({"error": arrays})
                continue
            wl, flux, ivar = arrays
            f = clean_flux(flux)
            err = error_from_ivar(ivar, f)
            nominal = forward(log_scale(interpolate(wl, f)))
            z = draw_noise([spectrum], [len(f)], draws, seed)[0].numpy()
            inputs = []
            for d in range(draws):
                noised = f + err * z[d]
                ok = ~np.isnan(noised)
                if not ok.any():  # np.interp would raise
                    break
                inputs.append(log_scale(np.interp(GRID, wl[ok], noised[ok]).astype(np.float32)))
            if len(inputs) < draws:
                rows.append({"error": "no usable pixels in the noise draws (no finite flux error)"})
                continue
            if batch_draws and draws:
                outs = forward(np.stack(inputs))
            else:
                outs = np.concatenate([forward(x) for x in inputs]) if draws else np.zeros((0, 4), np.float32)
            rows.extend(rows_from_columns(convert_outputs(nominal, outs[None])))
    return rows


def run_baseline(pipeline, spectra: Sequence[Spectrum], options) -> list[dict[str, Any]]:
    """``specq bench``'s yardstick: as the published code, one spectrum at a time, its draws in one forward.

    Parameters
    ----------
    pipeline : BossNetPipeline
        Supplies the loaded network.
    spectra : sequence of Spectrum
    options : workers.pipeline.Options
        Draws and seed (the baseline always runs float32).
    """
    return baseline_predict(pipeline.model, spectra, options.draws, options.seed, batch_draws=True)
