"""The straightforward way to run the AstroNN distance network, for benchmarks.

What a direct port of the reference pipeline does: normalize each spectrum on its own,
run ``passes`` separate forward passes over the batch in a Python loop with the module in
``train()`` mode (so ``F.dropout`` draws fresh masks from torch's global generator), then
compute distances one star at a time. Results agree with
:class:`~workers.astronn_dist.pipeline.AstroNNDistPipeline` statistically, not bit for
bit (different dropout masks).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from workers.astronn_dist.network import ApogeeDistBCNN
from workers.astronn_dist.photometry import SourceCatalog, star_photometry
from workers.astronn_dist.pipeline import NormalizationError, _raw_arrays, normalize, summarize_passes
from workers.astronn_dist.schema import ASTRONN_DIST_SCHEMA
from workers.spectrum import Spectrum


def baseline_predict(model: ApogeeDistBCNN, spectra: Sequence[Spectrum], passes: int = 100,
                     seed: int = 0, catalog: SourceCatalog | None = None) -> list[dict[str, Any]]:
    """Rows like the pipeline's, computed the simple way.

    Parameters
    ----------
    model : ApogeeDistBCNN
        Loaded network (left in ``eval()`` mode afterwards).
    spectra : sequence of Spectrum
    passes : int
        MC dropout passes (one full forward over the batch each).
    seed : int
        Seeds torch's global generator.
    catalog : SourceCatalog, optional

    Returns
    -------
    list of dict
        Schema fields, ``result_flags``, ``flag_warn``, ``flag_bad``; an ``error`` key and
        ``flag_no_result`` for a spectrum that cannot be normalized.
    """
    rows: list[dict[str, Any] | None] = [None] * len(spectra)
    norm, ok = [], []
    for i, s in enumerate(spectra):
        try:
            flux, err, bitmask = _raw_arrays(s)
            norm.append(normalize(flux, err, bitmask)[0][0])
            ok.append(i)
        except (NormalizationError, ValueError, ArithmeticError, OSError) as exc:
            rows[i] = _failed(str(exc))
    if ok:
        device = model.input_mean.device
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed_all(seed)
        x = model.standardize(np.stack(norm))
        model.train()
        try:
            with torch.no_grad():
                outs = [model(x) for _ in range(passes)]
        finally:
            model.eval()
        pred = torch.stack([p for p, _ in outs], dim=1).cpu().numpy()
        logvar = torch.stack([v for _, v in outs], dim=1).cpu().numpy()
        labels_std = float(model.labels_std[0])
        for k, i in enumerate(ok):  # one star at a time
            p = star_photometry(spectra[i], catalog)
            cols = summarize_passes(pred[k:k + 1], logvar[k:k + 1], labels_std,
                                    [np.nan if p.missing_k_mag else p.k_mag],
                                    [np.nan if p.missing_ebv else p.ebv],
                                    [p.plx], [p.e_plx], [p.gdr3_zeropoint])
            row = {f.name: float(cols[f.name][0]) for f in ASTRONN_DIST_SCHEMA.all_fields}
            row.update(result_flags=int(cols["result_flags"][0]), flag_warn=bool(cols["flag_warn"][0]),
                       flag_bad=bool(cols["flag_bad"][0]))
            rows[i] = row
    return rows  # type: ignore[return-value]


def _failed(reason: str) -> dict[str, Any]:
    row: dict[str, Any] = {f.name: np.nan for f in ASTRONN_DIST_SCHEMA.all_fields}
    flags = ASTRONN_DIST_SCHEMA.flag("flag_no_result").value
    warn, bad = ASTRONN_DIST_SCHEMA.summary(flags)
    row.update(result_flags=flags, flag_warn=bool(warn), flag_bad=bool(bad), error=reason)
    return row


# -- benchmark ---------------------------------------------------------------------------

def _rss_mb() -> float:
    """Resident memory of this process (Linux), MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _synthetic_spectra(n: int) -> list[Spectrum]:
    """``n`` noisy copies of the test spectrum, each with its own photometry."""
    from pathlib import Path

    data = np.load(Path(__file__).resolve().parents[2] / "tests" / "data" / "astronn_continuum.npz")
    rng = np.random.default_rng(0)
    return [Spectrum(path=f"bench-{i}.fits", hdu=1, row=0, instrument="apogee",
                     wavelength=10 ** (4.179 + 6e-6 * np.arange(8575)),
                     flux=(data["flux"] * (1 + 0.01 * rng.standard_normal(8575))).astype(np.float32),
                     error=data["err"].astype(np.float32), bitmask=data["bitmask"],
                     ids={"sdss_id": i}, meta={"ref_photometry": {"k_mag": 8 + 0.05 * i, "ebv": 0.1}})
            for i in range(n)]


def main(argv=None) -> None:
    """Benchmark: spectra/s of :func:`baseline_predict` vs the pipeline (demo weights)."""
    import argparse
    import tempfile
    import time

    parser = argparse.ArgumentParser(prog="python -m workers.astronn_dist.baseline", description=main.__doc__)
    parser.add_argument("--spectra", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="spectra per predict call")
    parser.add_argument("--passes", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--weights", default=None, help="published .pt (default: demo weights)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from workers.astronn_dist.pipeline import AstroNNDistPipeline

    with tempfile.TemporaryDirectory() as tmp:
        if args.weights is None:
            from workers.astronn_dist.network import demo_weights_path

            args.weights = demo_weights_path(tmp)
        pipe = AstroNNDistPipeline(weights=args.weights, device=args.device, draws=args.passes,
                                   seed=0, catalog=False)
        spectra = _synthetic_spectra(args.spectra)
        rss_model = _rss_mb()
        pipe.predict(spectra[:2])  # warm up; imports astroNN.gaia (TensorFlow)
        rss_gaia = _rss_mb()
        batches = [spectra[i:i + args.batch] for i in range(0, len(spectra), args.batch)]
        timings = {}
        for name, run in (("baseline", lambda b: baseline_predict(pipe.model, b, args.passes, 0)),
                          ("pipeline", pipe.predict)):
            t0 = time.perf_counter()
            for b in batches:
                run(b)
            timings[name] = len(spectra) / (time.perf_counter() - t0)
    print(f"{len(spectra)} spectra, batches of {args.batch}, {args.passes} passes, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    for name, rate in timings.items():
        print(f"  {name:9s} {rate:7.2f} spectra/s")
    print(f"  speed-up  {timings['pipeline'] / timings['baseline']:7.2f}x")
    print(f"  resident memory: {rss_model:.0f} MB with the model loaded, "
          f"{rss_gaia:.0f} MB after astroNN.gaia (TensorFlow) is imported")


if __name__ == "__main__":
    main()
