"""The bench's in-process part: the pipeline's baseline against specq's engine, on the same spectra.

:func:`run_bench` also runs the queue part (:mod:`specq.bench.queue`) and, for a pipeline
that declares one, the roofline.
"""
from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from pathlib import Path

from specq.bench.queue import DEFAULT_REDIS, claim_redis, queue_run, redis_reachable
from specq.bench.report import BenchResult


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def deviation(rows, reference_rows, names, tiny: float = 1e-30) -> dict:
    """Per field, the largest absolute and relative difference of ``rows`` from ``reference_rows``.

    Parameters
    ----------
    rows, reference_rows : sequences of dict
        Result rows of the same spectra, in the same order.
    names : sequence of str
        Fields to compare; rows where either value is not finite are left out.
    tiny : float
        Floor of the reference magnitude in the relative difference.

    Returns
    -------
    dict
        ``{name: {"max_abs": float, "max_rel": float}}``, None where nothing compares.
    """
    import numpy as np

    out = {}
    for name in names:
        a = np.array([r.get(name, np.nan) for r in rows], dtype=float)
        b = np.array([r.get(name, np.nan) for r in reference_rows], dtype=float)
        ok = np.isfinite(a) & np.isfinite(b)
        if not ok.any():
            out[name] = None
            continue
        diff = np.abs(a[ok] - b[ok])
        out[name] = {"max_abs": float(diff.max()),
                     "max_rel": float(np.max(diff / np.maximum(np.abs(b[ok]), tiny)))}
    return out


def _max_rel_diff(engine_rows, baseline_rows, names) -> dict:
    """Per field, the largest relative difference of the engine's rows from the baseline's."""
    return {name: None if dev is None else dev["max_rel"]
            for name, dev in deviation(engine_rows, baseline_rows, names, tiny=1e-12).items()}


def _float32_reference(pipeline, refs, data_root, rows, result: BenchResult, repeat: int = 1) -> None:
    """Run the engine again in float32 on the same spectra and seed (best of ``repeat``, as the
    engine); record speed and deviation on the fields the spec names."""
    from workers import engine

    float32 = pipeline.options(precision="float32")  # the same warm model and noise: only the arithmetic changes
    seconds = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        reference = engine.process(pipeline, refs, data_root, options=float32)
        seconds = min(seconds, time.perf_counter() - t0)
    result.float32_per_s = len(refs) / seconds
    spec = pipeline.spec
    result.precision_deviation = deviation(rows, reference, spec.precision_fields or spec.compare)
    result.precision_flags_changed = sum(int(a["result_flags"]) != int(b["result_flags"])
                                         for a, b in zip(rows, reference))


def _synthetic_files(data_root: Path, instrument: str, n_spectra: int, seed: int) -> list[str]:
    """The bench's input files under ``data_root`` (relative paths), written once: a later
    bench in the same work folder asking for the same set (another precision) reuses them."""
    from specq.testing.surveys import write_source_files
    from specq.testing.synthetic import make_dataset

    made = {"instrument": instrument, "spectra": n_spectra, "seed": seed}
    record = data_root / "bench-files.json"
    if record.exists():
        kept = json.loads(record.read_text())
        if kept.get("made") == made:
            return kept["files"]
    truth = make_dataset(data_root, n_boss=n_spectra if instrument == "boss" else 0,
                         n_apogee=n_spectra if instrument == "apogee" else 0, seed=seed)
    # Sources beyond BOSS and APOGEE (LAMOST, Gaia) have their own synthetic files.
    files = sorted(set(truth["path"])) + write_source_files(data_root, instrument, n_spectra, seed)
    record.write_text(json.dumps({"made": made, "files": files}))
    return files


def run_bench(pipeline_name: str, n_spectra: int = 64, draws: int | None = None,
              device: str = "cpu", weights=None, baseline_spectra: int | None = None, queue: bool = True,
              broker_url: str | None = None, seed: int = 1, workdir: Path | None = None,
              batch_size: int | None = None, queue_workers: int = 1, repeat: int = 1, force: bool = False,
              readers: bool = True, **pipeline_options) -> BenchResult:
    """Measure one pipeline: baseline, engine and queue (see :mod:`specq.bench`).

    ``repeat`` > 1 times each of them that many times, baseline and engine in turns so both
    see the same moments of a noisy machine, and keeps the best of each: on a shared VM
    the fastest run is the one least disturbed by neighbours. ``readers=False`` leaves out
    the timing of each FITS reader on the bench's files (``readers_ms`` stays empty).
    ``pipeline_options``: the pipeline class's own keywords (its spec's ``options``, precision).
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    url = None
    if queue:  # refuse someone else's Redis database now, not after minutes of measuring
        url = broker_url or (DEFAULT_REDIS if redis_reachable(DEFAULT_REDIS) else None)
        if url:
            claim_redis(url, force)
    import torch

    from specq.progress import progress_bar
    from tasks.producer import expand_file
    from workers import engine, registry
    from workers.readers import measure_readers, read_spectrum
    from workers.settings import load_settings

    work = Path(workdir or tempfile.mkdtemp(prefix="specq-bench-"))
    data_root = work / "data"
    spec = registry.get(pipeline_name)
    files = _synthetic_files(data_root, spec.instrument, n_spectra, seed)
    settings = load_settings(demo_weights=True)  # the bench asks for demo weights where none are installed
    backend = settings.fits_backend
    refs = [r for f in files
            for r in expand_file(f, [pipeline_name], data_root, backend=backend)[0].get(pipeline_name, [])]
    pipeline = engine.get_pipeline(pipeline_name, settings, weights=weights, device=device, draws=draws,
                                   seed=seed, batch_size=batch_size, **pipeline_options)
    draws = pipeline.defaults.draws
    # The pipeline's own options as it runs them (its resolved value where it keeps one, e.g. auto → fft).
    shown = {o.label: str(getattr(pipeline, o.keyword, pipeline_options.get(o.keyword)))
             for o in spec.options_for("bench") if hasattr(pipeline, o.keyword) or o.keyword in pipeline_options}
    result = BenchResult(pipeline_name, str(device), draws, len(refs), 0, torch.get_num_threads(), options=shown,
                         demo_weights=bool(pipeline.demo), repeat=repeat)

    run_baseline = spec.load_baseline()
    # Steps: warm-up, then engine and baseline per repeat, then a queue round per repeat.
    per_round = 2 if run_baseline else 1
    bar = progress_bar(total=1 + per_round * repeat + (repeat if queue else 0), unit="step",
                       desc=f"bench {pipeline_name}")
    cuda = torch.device(device).type == "cuda"
    # On a GPU the host feeds the device with a worker's readers; on a CPU the cores are the
    # device, and the engine reads in one thread beside the network, as before.
    reading = engine.reading(settings) if cuda else {}
    # Warm-up outside the clock, for both: first calls allocate and pick kernels. On a GPU every
    # batch shape of the timed pass (the first batches grow to the full size) is met once.
    warm = refs[:2 * (pipeline.batch_size or len(refs))] if cuda else refs[:2]
    engine.process(pipeline, warm, data_root, backend=backend, **reading)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    n_base = min(len(refs), baseline_spectra or len(refs)) if run_baseline else 0
    baseline_options = pipeline.options(seed=seed, precision=spec.precisions[0])

    def baseline(n: int):  # the straightforward way reads its spectra itself, inside its clock
        spectra = [read_spectrum(data_root / r.path, r.hdu, r.row, rel_path=r.path, backend=backend)
                   for r in refs[:n]]
        return run_baseline(pipeline, spectra, baseline_options)

    if run_baseline:
        baseline(min(2, n_base))
    bar.update(1)

    engine_s = baseline_s = float("inf")
    baseline_rows = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        engine_rows = engine.process(pipeline, refs, data_root, backend=backend, **reading)
        engine_s = min(engine_s, time.perf_counter() - t0)
        bar.update(1)
        if not result.peak_rss_mb_engine:  # before any baseline ran in this process
            result.peak_rss_mb_engine = _peak_rss_mb()
            if cuda:  # the engine's own, before a baseline or a float32 reference adds to it
                result.peak_device_mb_engine = torch.cuda.max_memory_allocated(device) / 2**20
        if run_baseline:
            t0 = time.perf_counter()
            baseline_rows = baseline(n_base)
            baseline_s = min(baseline_s, time.perf_counter() - t0)
            bar.update(1)
    result.load = os.getloadavg()  # on a shared machine the figures above mean little without it
    result.engine_per_s = len(refs) / engine_s
    result.baseline_per_s = n_base / baseline_s if run_baseline else 0.0
    result.baseline_spectra = n_base
    result.precision = pipeline.defaults.precision
    if result.precision != "float32":
        _float32_reference(pipeline, refs, data_root, engine_rows, result, repeat)
        # Queue workers take no precision option: their float32 speed would not compare.
        if queue and any(r.get("precision") for r in engine_rows):
            queue = False
            result.queue_broker = "not run: queue workers take no precision option (they run float32)"
    if run_baseline:
        result.max_rel_diff = _max_rel_diff(engine_rows[:n_base], baseline_rows, spec.compare)
        result.baseline_note = spec.baseline_note
    result.peak_rss_mb_total = _peak_rss_mb()
    roofline = spec.load_roofline()
    if roofline:
        result.roofline_per_s, result.matmul_gflops = roofline(pipeline, len(refs), draws, tries=max(3, repeat))

    if readers:
        paths = [data_root / f for f in files]
        result.readers_ms = {b: round(s * 1000, 2) for b, s in measure_readers(paths, repeat=2).items()}

    if queue:
        result.queue_broker = url or "embedded filesystem"
        result.queue_per_s, result.worker_peak_rss_mb = queue_run(
            pipeline_name, refs, data_root, work, url, draws, seed, weights, str(device), len(refs),
            n_workers=queue_workers, repeat=repeat, force=force, progress=bar.update)
        result.queue_workers = queue_workers
    bar.close()
    return result
