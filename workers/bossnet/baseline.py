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



def benchmark_spectra(n: int = 16) -> list[Spectrum]:
    """``n`` BOSS-like spectra (4648 pixels, 3567–10399 Å) with noise, for timing runs."""
    rng = np.random.default_rng(20240101)
    loglam = 3.5524 + 1e-4 * np.arange(4648)
    wl = 10.0**loglam
    out = []
    for i in range(n):
        continuum = 20 + 10 * np.sin(wl / 700 + i)
        lines = 1 - 0.5 * np.exp(-0.5 * ((wl[:, None] - rng.uniform(3900, 8800, 30)) / 3) ** 2).sum(axis=1)
        ivar = np.full(4648, 1 / rng.uniform(0.5, 2) ** 2, np.float32)
        flux = (continuum * lines + rng.normal(0, 1 / np.sqrt(ivar))).astype(np.float32)
        out.append(Spectrum(path=f"bench/spec-{i:04d}.fits", hdu=1, row=0, instrument="boss",
                            wavelength=wl, flux=flux, ivar=ivar))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Time the baseline and the pipeline: ``python -m workers.bossnet.baseline --help``."""
    import argparse
    import time

    import torch

    from workers.bossnet.pipeline import BossNetPipeline

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--spectra", type=int, default=16)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    ap.add_argument("--weights", default=None, help="weights (default: the demo weights)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--only", choices=["baseline", "published", "pipeline", "direct"], nargs="*")
    args = ap.parse_args(argv)

    spectra = benchmark_spectra(args.spectra)
    pipe = BossNetPipeline(weights=args.weights, device="cpu", draws=args.draws, seed=1,
                           batch_size=args.batch_size)
    runs = {
        "baseline": lambda: baseline_predict(pipe.model, spectra, args.draws, 1),
        "published": lambda: baseline_predict(pipe.model, spectra, args.draws, 1, batch_draws=True),
        "pipeline": lambda: pipe.predict(spectra),
        "direct": lambda: _with_impl(pipe, "direct", spectra),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.spectra} spectra, "
          f"{args.draws} draws, pipeline batch {pipe.batch_size} spectra")
    names = args.only or list(runs)
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    runs["pipeline"]()  # warm up: the fft plan, allocator pools
    for _ in range(args.repeat):  # interleaved, so that load from other processes hits all alike
        for name in names:
            t0, c0 = time.perf_counter(), time.process_time()
            runs[name]()
            walls[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
    for name in names:
        wall, cpu = min(walls[name]), min(cpus[name])
        print(f"{name:10s} {args.spectra / wall:6.2f} spectra/s  (wall {wall:6.2f} s, cpu {cpu:6.2f} s, "
              f"best of {args.repeat}; median {args.spectra / np.median(walls[name]):6.2f} spectra/s)",
              flush=True)


def _with_impl(pipe, impl: str, spectra):
    with _direct(pipe.model) if impl == "direct" else contextlib.nullcontext():
        return pipe.predict(spectra)


if __name__ == "__main__":
    main()
