"""``specq bench``: spectra per second, the straightforward way against specq's engine and queue.

One run, the same weights and the same synthetic spectra in the same process:

* **baseline** — the straightforward way (``workers.*.baseline``): BossNet one spectrum
  at a time, the noise-free pass then each draw with numpy interpolation; AstroNN one
  forward per MC dropout pass;
* **engine** — specq's batched engine, files read ahead of the device;
* **queue** — end to end through a broker (Redis when reachable, else the embedded one)
  and one real worker process.

It prints spectra/s, the ratios engine/baseline and queue/engine, peak memory and the
agreement of the engine's outputs with the baseline's. For AstroNN it also prints a
**roofline**: spectra/s if all of the network's multiply-adds, done densely, ran at the rate
dense_1's matrix product just reached, and nothing else cost anything. An engine that
computes densely, as specq's does, cannot pass it; roofline/baseline is the most
engine/baseline such an engine could show on this machine.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
# Written into the Redis database the bench uses: a database holding keys but not this one
# is someone else's, and the bench will not flush it without --force.
BENCH_MARKER = "specq:bench"


class BenchRefused(RuntimeError):
    """The bench's Redis database holds keys the bench did not write (and no --force)."""


def claim_redis(url: str, force: bool = False) -> None:
    """Flush the Redis database at ``url`` for the bench, if it is the bench's to flush.

    It is when it is empty, holds the bench's marker (a database the bench used before),
    or ``force``. The marker is written after the flush.

    Raises
    ------
    BenchRefused
        The database holds keys and no marker: it may be a production queue.
    """
    import redis

    from specq.status import _redact

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    keys = client.dbsize()
    if keys and not client.exists(BENCH_MARKER) and not force:
        raise BenchRefused(f"{_redact(url)} holds {keys} key(s) the bench did not write, and the bench flushes "
                           f"its database: give --broker an empty Redis database, or --force to flush this one")
    client.flushdb()
    client.set(BENCH_MARKER, "this Redis database is flushed by `specq bench` before each run")


@dataclass
class BenchResult:
    pipeline: str
    device: str
    draws: int
    spectra: int
    baseline_spectra: int
    threads: int
    conv_impl: str = ""
    repeat: int = 1  # each of baseline, engine and queue timed this many times; the best is kept
    baseline_per_s: float = 0.0
    engine_per_s: float = 0.0
    queue_per_s: float | None = None
    queue_broker: str = ""
    queue_workers: int = 1
    peak_rss_mb_engine: float = 0.0
    peak_rss_mb_total: float = 0.0
    worker_peak_rss_mb: float | None = None
    max_rel_diff: dict = field(default_factory=dict)
    readers_ms: dict = field(default_factory=dict)
    demo_weights: bool = True
    precision: str = "float32"  # BossNet's forward, as requested (tf32 is float32 off CUDA)
    float32_per_s: float | None = None  # the engine again in float32, when precision is not float32
    precision_deviation: dict = field(default_factory=dict)  # field → max_abs, max_rel from float32
    precision_flags_changed: int = 0
    roofline_per_s: float | None = None  # AstroNN: the dense float work alone, at the measured matmul rate
    matmul_gflops: float | None = None

    @property
    def roofline_speedup(self) -> float | None:
        """The most engine/baseline a dense float32 engine could reach here (AstroNN)."""
        return self.roofline_per_s / self.baseline_per_s if self.roofline_per_s and self.baseline_per_s else None

    @property
    def speedup(self) -> float:
        return self.engine_per_s / self.baseline_per_s if self.baseline_per_s else float("nan")

    @property
    def queue_ratio(self) -> float | None:
        return self.queue_per_s / self.engine_per_s if self.queue_per_s and self.engine_per_s else None


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _max_rel_diff(engine_rows, baseline_rows, names) -> dict:
    """Per field, the largest relative difference of the engine's rows from the baseline's."""
    return {name: None if dev is None else dev["max_rel"]
            for name, dev in _deviation(engine_rows, baseline_rows, names, tiny=1e-12).items()}


PRECISION_FIELDS = ("teff", "e_teff", "logg", "e_logg", "fe_h", "e_fe_h", "bn_v_r", "e_bn_v_r")


def _deviation(rows, reference_rows, names, tiny: float = 1e-30) -> dict:
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


def _float32_reference(pipeline, refs, data_root, rows, result: BenchResult, repeat: int = 1) -> None:
    """Run the engine again in float32 on the same spectra and seed (best of ``repeat``, as the
    engine); record speed and deviation."""
    from workers import engine

    float32 = pipeline.options(precision="float32")  # the same warm model and noise: only the arithmetic changes
    seconds = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        reference = engine.process(pipeline, refs, data_root, options=float32)
        seconds = min(seconds, time.perf_counter() - t0)
    result.float32_per_s = len(refs) / seconds
    result.precision_deviation = _deviation(rows, reference, PRECISION_FIELDS)
    result.precision_flags_changed = sum(int(a["result_flags"]) != int(b["result_flags"])
                                         for a, b in zip(rows, reference))


def _astronn_roofline(model, n_spectra: int, passes: int, tries: int = 3) -> tuple[float, float]:
    """Spectra/s if the network's dense float work ran at dense_1's measured rate and nothing else cost anything.

    dense_1 is timed on random rows in the engine's steps, with the loaded weights and the
    engine's matrix product (:func:`workers.linear.linear`), ``tries`` times (the fastest is
    kept); every multiply-add of the dense network
    (:meth:`ApogeeDistBCNN.float_ops`) is then charged at that rate. Hashing, conv2's vector
    code, pooling, reading and normalizing are free here. An engine that skipped the
    products of dropped units row by row could do less work than this counts.

    Returns
    -------
    roofline_per_s, gflops : float
    """
    import torch

    from workers.astronn_dist.network import default_rows_per_chunk
    from workers.linear import linear

    device = model.input_mean.device
    weight = model.dense_1.weight.detach()
    step = default_rows_per_chunk(device)
    rows = torch.rand(step, weight.shape[1], device=device, generator=torch.Generator(device).manual_seed(0))
    total = n_spectra * passes
    linear(rows, weight)  # first call outside the clock
    seconds = float("inf")
    for _ in range(tries):
        _sync(device)
        t0 = time.perf_counter()
        for r0 in range(0, total, step):
            linear(rows[: min(step, total - r0)], weight)
        _sync(device)
        seconds = min(seconds, time.perf_counter() - t0)
    gflops = 2.0 * total * weight.numel() / seconds / 1e9
    per_spectrum = sum(model.float_ops(passes).values())
    return gflops * 1e9 / per_spectrum, gflops


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ValueError):
        return False


def _queue_run(name: str, refs: list, data_root: Path, work: Path, broker_url: str | None,
               draws: int, seed: int, weights, device: str, expected: int,
               n_workers: int = 1, repeat: int = 1, force: bool = False,
               progress=None) -> tuple[float, float | None]:
    """Spectra/s end to end through a broker and warm workers (best of ``repeat`` rounds); and the
    workers' largest peak RSS (MB)."""
    from tasks.app import app, configure
    from tasks.producer import submit
    from workers.settings import load_settings
    from specq.demo import start_worker, stop_worker
    from workers.store import ResultStore

    env = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
    env.update({"SPECQ_STATE_DIR": str(work / "state"), "SPECQ_DATA_ROOT": str(data_root),
                "SPECQ_DATABASE_URL": f"sqlite:///{work / 'queue.sqlite'}", "SPECQ_BROKER_URL": broker_url or "",
                "SPECQ_DEVICE": device})
    if weights:
        # The workers find weights by their installed name: install (a checked copy) into the bench's folder.
        from workers.weights_manifest import install

        env["SPECQ_WEIGHTS_DIR"] = str(install(weights, work / "weights", pipeline=name,
                                               allow_unpublished=True).path.parent)
    else:
        env["SPECQ_DEMO_WEIGHTS"] = "1"  # the bench's default: demo weights where none are installed
    if broker_url:
        claim_redis(broker_url, force)
    saved = {k: os.environ.get(k) for k in env if k.startswith("SPECQ_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("SPECQ_")})
    try:
        settings = load_settings()
        configure(app, settings)
        queue = settings.queue_for(name)
        if n_workers > 1:  # share the cores instead of oversubscribing them
            threads = str(max(1, (os.cpu_count() or 1) // n_workers))
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        workers = [start_worker(env, work / f"worker{i}.log", queues=queue, name=f"bench{i}")
                   for i in range(n_workers)]
        store = ResultStore(settings.database)
        try:
            # Warm up: each worker loads its model on its first message.
            warm = submit(refs[:n_workers], name, options={"draws": draws, "seed": seed}, settings=settings,
                          chunk_size=1)
            _wait_rows(store, warm.n_spectra, workers, work, task_ids=_task_ids(warm))
            time.sleep(2)  # let every worker finish its warm-up message
            # The same references the engine was timed on (files expanded beforehand, as there).
            # Each round rewrites the same rows: it is done when its own messages wrote them all,
            # and it ended when the last of them was written (the rows' own timestamps, so
            # that polling the store can be slow and cheap: it shares the cores with the worker).
            elapsed = float("inf")
            for _ in range(repeat):
                t0 = time.time()
                sub = submit(refs, name, options={"draws": draws, "seed": seed}, settings=settings,
                             chunk_size=max(1, min(settings.chunk_size_for(name), len(refs) // (2 * n_workers))))
                ids = set(_task_ids(sub))
                _wait_rows(store, sub.n_spectra, workers, work, task_ids=ids, pipeline=name, poll=0.1)
                last = max(_utc_seconds(r["created"]) for r in store.rows(name) if r["task_id"] in ids)
                elapsed = min(elapsed, last - t0)
                if progress:
                    progress(1)
            peak = max((_vm_hwm_mb(w.pid) or 0.0) for w in workers)
        finally:
            for w in workers:
                stop_worker(w)
        return expected / elapsed, peak
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _task_ids(submission) -> list[str]:
    return [t for ids in submission.task_ids.values() for t in ids]


def _wait_rows(store, n: int, workers, work: Path, timeout: float = 1800, task_ids=None,
               pipeline: str | None = None, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while store.count(pipeline, task_ids=task_ids) < n:
        if any(w.poll() is not None for w in workers):
            raise RuntimeError(f"the bench worker exited; see {work / 'worker.log'}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the bench worker did not finish; see {work / 'worker.log'}")
        time.sleep(poll)


def _utc_seconds(created) -> float:
    """POSIX seconds of a row's ``created`` (SQLite hands it back without its UTC zone)."""
    import datetime

    return (created if created.tzinfo else created.replace(tzinfo=datetime.timezone.utc)).timestamp()


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def run_bench(pipeline_name: str = "bossnet", n_spectra: int = 64, draws: int | None = None,
              device: str = "cpu", weights=None, baseline_spectra: int | None = None, queue: bool = True,
              broker_url: str | None = None, seed: int = 1, workdir: Path | None = None,
              batch_size: int | None = None, queue_workers: int = 1, repeat: int = 1, force: bool = False,
              **pipeline_options) -> BenchResult:
    """Measure one pipeline: baseline, engine and queue (see the module docstring).

    ``repeat`` > 1 times each of them that many times, baseline and engine in turns so both
    see the same moments of a noisy machine, and keeps the best of each: on a shared VM
    the fastest run is the one least disturbed by neighbours.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    url = None
    if queue:  # refuse someone else's Redis database now, not after minutes of measuring
        url = broker_url or (DEFAULT_REDIS if _redis_reachable(DEFAULT_REDIS) else None)
        if url:
            claim_redis(url, force)
    import torch

    from specq.progress import progress_bar

    from tasks.producer import expand_file
    from workers.settings import load_settings
    from specq.testing.synthetic import make_dataset
    from workers import engine, readers, registry

    work = Path(workdir or tempfile.mkdtemp(prefix="specq-bench-"))
    data_root = work / "data"
    spec = registry.get(pipeline_name)
    instrument = spec.instrument
    truth = make_dataset(data_root, n_boss=n_spectra if instrument == "boss" else 0,
                         n_apogee=n_spectra if instrument == "apogee" else 0, seed=seed)
    files = sorted(set(truth["path"]))
    settings = load_settings(demo_weights=True)  # the bench asks for demo weights where none are installed
    backend = settings.fits_backend
    refs = [r for f in files
            for r in expand_file(f, [pipeline_name], data_root, backend=backend)[0].get(pipeline_name, [])]
    pipeline = engine.get_pipeline(pipeline_name, settings, weights=weights, device=device, draws=draws,
                                   seed=seed, batch_size=batch_size, **pipeline_options)
    draws = pipeline.defaults.draws
    result = BenchResult(pipeline_name, str(device), draws, len(refs), 0, torch.get_num_threads(),
                         conv_impl=str(getattr(pipeline, "conv_impl", "")), demo_weights=bool(pipeline.demo),
                         repeat=repeat)

    # Steps: warm-up, then engine and baseline per repeat, then a queue round per repeat.
    bar = progress_bar(total=1 + 2 * repeat + (repeat if queue else 0), unit="step", desc=f"bench {pipeline_name}")
    # Warm-up outside the clock, for both: first calls allocate and pick kernels.
    engine.process(pipeline, refs[:2], data_root, backend=backend)
    n_base = min(len(refs), baseline_spectra or len(refs))

    run_baseline = spec.load_baseline()
    if run_baseline is None:
        raise ValueError(f"{pipeline_name} declares no baseline to bench against")
    baseline_options = pipeline.options(seed=seed, precision=spec.precisions[0])

    def baseline(n: int):  # the straightforward way reads its spectra itself, inside its clock
        spectra = [readers.read_spectrum(data_root / r.path, r.hdu, r.row, rel_path=r.path, backend=backend)
                   for r in refs[:n]]
        return run_baseline(pipeline, spectra, baseline_options)

    baseline(min(2, n_base))
    bar.update(1)

    engine_s = baseline_s = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        engine_rows = engine.process(pipeline, refs, data_root, backend=backend)
        engine_s = min(engine_s, time.perf_counter() - t0)
        bar.update(1)
        if not result.peak_rss_mb_engine:  # before any baseline ran in this process
            result.peak_rss_mb_engine = _peak_rss_mb()
        t0 = time.perf_counter()
        baseline_rows = baseline(n_base)
        baseline_s = min(baseline_s, time.perf_counter() - t0)
        bar.update(1)
    result.engine_per_s = len(refs) / engine_s
    result.baseline_per_s = n_base / baseline_s
    result.baseline_spectra = n_base
    result.precision = pipeline.defaults.precision
    if result.precision != "float32":
        _float32_reference(pipeline, refs, data_root, engine_rows, result, repeat)
        # Queue workers take no precision option: their float32 speed would not compare.
        if queue and any(r.get("precision") for r in engine_rows):
            queue = False
            result.queue_broker = "not run: queue workers take no precision option (they run float32)"
    result.max_rel_diff = _max_rel_diff(engine_rows[:n_base], baseline_rows, spec.compare)
    result.peak_rss_mb_total = _peak_rss_mb()
    if pipeline_name == "astronn_dist":
        result.roofline_per_s, result.matmul_gflops = _astronn_roofline(pipeline.model, len(refs), draws,
                                                                        tries=max(3, repeat))

    paths = [data_root / f for f in files]
    result.readers_ms = {b: round(s * 1000, 2) for b, s in readers.measure_readers(paths, repeat=2).items()}

    if queue:
        result.queue_broker = url or "embedded filesystem"
        result.queue_per_s, result.worker_peak_rss_mb = _queue_run(
            pipeline_name, refs, data_root, work, url, draws, seed, weights, str(device), len(refs),
            n_workers=queue_workers, repeat=repeat, force=force, progress=bar.update)
        result.queue_workers = queue_workers
    bar.close()
    return result


def cpu_capability() -> str:
    """The vector ISA torch's CPU kernels use here (``AVX2``, ``AVX512`` …), printed with every table."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def render(r: BenchResult) -> str:
    lines = [f"specq bench — {r.pipeline}, {r.draws} {'draws' if r.pipeline == 'bossnet' else 'MC passes'}, "
             f"device {r.device}, {r.threads} threads, CPU {cpu_capability()}"
             + (f", conv {r.conv_impl}" if r.conv_impl else "")
             + (f", best of {r.repeat} runs each" if r.repeat > 1 else "")
             + ("  [DEMO WEIGHTS]" if r.demo_weights else "")]
    lines.append(f"  baseline  {r.baseline_per_s:9.2f} spectra/s   ({r.baseline_spectra} spectra, the straightforward way)")
    lines.append(f"  engine    {r.engine_per_s:9.2f} spectra/s   ({r.spectra} spectra)   engine/baseline = {r.speedup:.2f}x")
    if r.queue_per_s is not None:
        lines.append(f"  queue     {r.queue_per_s:9.2f} spectra/s   (via {r.queue_broker}, {r.queue_workers} worker{'s' if r.queue_workers > 1 else ''})   "
                     f"queue/engine = {r.queue_ratio:.2f}")
    if r.roofline_per_s:
        lines.append(f"  roofline  {r.roofline_per_s:9.2f} spectra/s   (the dense network's multiply-adds alone at "
                     f"dense_1's measured {r.matmul_gflops:.1f} GFLOP/s)   roofline/baseline = "
                     f"{r.roofline_speedup:.2f}x, engine at {r.engine_per_s / r.roofline_per_s:.0%} of it")
    lines.append(f"  peak RSS  {r.peak_rss_mb_engine:.0f} MB after engine, {r.peak_rss_mb_total:.0f} MB after baseline"
                 + (f", worker {r.worker_peak_rss_mb:.0f} MB" if r.worker_peak_rss_mb else ""))
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in r.max_rel_diff.items() if v is not None)
    lines.append(f"  engine vs baseline, max relative difference: {diffs}")
    lines.append("  readers, ms per spectrum: " + ", ".join(f"{k} {v}" for k, v in r.readers_ms.items()))
    if r.precision != "float32":
        lines += _render_precision(r)
    return "\n".join(lines)


def _render_precision(r: BenchResult) -> list[str]:
    """The precision part of :func:`render`: float32 speed and the deviation from float32."""
    effective = "float32" if r.precision == "tf32" and not r.device.startswith("cuda") else r.precision
    note = " (TF32 exists only on CUDA: this is float32)" if effective != r.precision else ""
    lines = [f"  precision {r.precision}{note}: engine in float32 {r.float32_per_s or 0:9.2f} spectra/s, "
             f"{r.precision}/float32 = {r.engine_per_s / r.float32_per_s if r.float32_per_s else float('nan'):.2f}x"]
    if r.queue_per_s is None and r.queue_broker:
        lines.append(f"  queue     {r.queue_broker}")
    lines += [f"  {r.precision} vs float32, same {r.spectra} spectra and noise, max |difference| (max relative):"]
    for name, dev in r.precision_deviation.items():
        text = "n/a" if dev is None else f"{dev['max_abs']:.3g} ({dev['max_rel']:.2g})"
        lines.append(f"    {name:<9} {text}")
    lines.append(f"    result_flags differ on {r.precision_flags_changed} of {r.spectra} spectra")
    lines.append(f"    (\"engine vs baseline\" above compares the {r.precision} engine with the float32 baseline)")
    if r.demo_weights:
        lines.append("    (demo weights are untrained: these deviations are only indicative)")
    return lines


def run_latency(n_files: int = 40, rate: float = 2.0, draws: int | None = None, broker_url: str | None = None,
                seed: int = 1, force: bool = False) -> dict:
    """Streaming latency: files land at ``rate`` per second in a watched folder; seconds
    from a file's landing (renamed into place) to its result row, p50 and p99."""
    import threading

    import numpy as np

    from tasks.app import app, configure
    from workers.settings import load_settings
    from tasks.watch import Watcher
    from specq.demo import start_worker, stop_worker
    from workers.store import ResultStore
    from specq.testing.synthetic import write_spec_lite

    url = broker_url or DEFAULT_REDIS
    if not _redis_reachable(url):
        raise RuntimeError(f"the latency benchmark needs Redis at {url}")
    claim_redis(url, force)
    work = Path(tempfile.mkdtemp(prefix="specq-latency-"))
    incoming = work / "data" / "incoming"
    incoming.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
    env.update({"SPECQ_STATE_DIR": str(work / "state"), "SPECQ_DATA_ROOT": str(work / "data"),
                "SPECQ_DATABASE_URL": f"sqlite:///{work / 'results.sqlite'}", "SPECQ_BROKER_URL": url,
                "SPECQ_DEMO_WEIGHTS": "1"})
    os.environ.update({k: v for k, v in env.items() if k.startswith("SPECQ_")})
    settings = load_settings()
    configure(app, settings)
    worker = start_worker(env, work / "worker.log", queues=settings.bossnet_queue, name="latency")
    store = ResultStore(settings.database)
    options = {"draws": draws} if draws is not None else {}
    watcher = Watcher([incoming], "bossnet", settings, poll_interval=2.0, settle=2.0, events=True, options=options)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    landed: dict[str, float] = {}
    try:
        # Warm-up file: the worker loads its model before the clock starts.
        write_spec_lite(incoming / "spec-0-0-0.fits", teff=5000, logg=4, fe_h=0, v_r=0, snr=30, seed=seed)
        _wait_rows(store, 1, [worker], work)
        t_next = time.monotonic()
        for i in range(1, n_files + 1):
            time.sleep(max(0.0, t_next - time.monotonic()))
            name = f"spec-{i}-60000-{i}.fits"
            write_spec_lite(incoming / name, teff=4000 + 50 * i, logg=4.0, fe_h=-0.2, v_r=10.0, snr=30, seed=seed + i)
            landed[f"incoming/{name}"] = time.time()
            t_next += 1.0 / rate
        _wait_rows(store, n_files + 1, [worker], work)
    finally:
        stop.set()
        thread.join(10)
        stop_worker(worker)
    created = {r["path"]: r["created"] for r in store.rows("bossnet")}
    lat = np.array([_utc_seconds(created[p]) - t for p, t in landed.items()])
    return {"files": n_files, "rate_per_s": rate, "p50_s": float(np.percentile(lat, 50)),
            "p99_s": float(np.percentile(lat, 99)), "max_s": float(lat.max()), "broker": url}


def main_bench(args) -> int:
    try:
        return _main_bench(args)
    except BenchRefused as exc:
        print(f"specq bench: {exc}", file=sys.stderr)
        return 2


def _main_bench(args) -> int:
    force = bool(getattr(args, "force", False))
    if args.latency:
        res = run_latency(n_files=args.spectra, rate=args.rate, draws=args.draws, broker_url=args.broker,
                          force=force)
        print(f"specq bench --latency: {res['files']} files at {res['rate_per_s']} files/s via {res['broker']}: "
              f"land → row p50 {res['p50_s']:.2f} s, p99 {res['p99_s']:.2f} s, max {res['max_s']:.2f} s")
        return 0
    from workers import registry

    results = []
    for p in registry.parse(args.pipeline):
        extra = {}
        if p == "bossnet" and args.conv:
            extra["conv_impl"] = args.conv
        if args.precision and args.precision in registry.get(p).precisions:
            extra["precision"] = args.precision
        elif args.precision not in (None, "float32"):
            print(f"note: {p} runs in float32 (it offers no {args.precision} precision)", file=sys.stderr)
        r = run_bench(p, n_spectra=args.spectra, draws=args.draws, device=args.device, weights=args.weights,
                      baseline_spectra=args.baseline_spectra, queue=not args.no_queue, broker_url=args.broker,
                      batch_size=args.batch_size, queue_workers=args.workers, repeat=args.repeat, force=force,
                      **extra)
        print(render(r), flush=True)
        results.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps([{**asdict(r), "speedup": r.speedup, "queue_ratio": r.queue_ratio,
                                                "roofline_speedup": r.roofline_speedup}
                                               for r in results], indent=2))
    return 0


