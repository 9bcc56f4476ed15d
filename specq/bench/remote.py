"""``specq bench --remote``: spectra read per second from a URL data root, beside the local folder.

The same synthetic files are read three ways through the engine's read path
(:func:`workers.engine.read_jobs`: list the file's spectra, read each into a
:class:`~workers.spectrum.Spectrum`), with no model, so the figures are the data path's own:

* **local** — from the folder;
* **cold** — from an HTTP root served on this host by a server that honours ``Range``
  (:class:`specq.testing.http_server.ArchiveServer`), with an empty cache: every file is
  fetched;
* **warm** — the same again: every file is in the cache (a HEAD each, no GET);
* **ranged** — with every file bigger than the range threshold (0 MB): only the blocks the
  reader asks for travel, and nothing is cached.

Each figure is the best of ``repeat`` rounds (a cold round starts from an empty cache).
A server on the same host has no network latency: against a real archive the cold and
ranged figures are lower, the warm one about the same.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["RemoteBenchResult", "render", "run_remote_bench"]


@dataclass
class RemoteBenchResult:
    """Spectra per second of each way of reading, and what travelled."""

    n_files: int
    n_spectra: int
    megabytes: float  # the files' total size
    repeat: int
    local_per_s: float
    cold_per_s: float
    warm_per_s: float
    ranged_per_s: float
    cold_gets: int  # GET requests of one cold round (one per file)
    warm_gets: int  # GET requests of one warm round (0: all from the cache)
    ranged_megabytes: float  # bytes asked for by range requests in one ranged round

    def as_dict(self) -> dict:
        return asdict(self)


def _read_all(files: list[str], root, instrument: str, backend: str | None) -> int:
    """Read every spectrum of ``files`` under ``root``; how many were read."""
    from workers import engine
    from workers.refs import SpectrumRef

    read = 0
    for name in files:
        jobs = engine.read_jobs(SpectrumRef(name), root, instrument, backend)
        bad = [job.error for job in jobs if job.error is not None]
        if bad:
            raise RuntimeError(f"specq bench --remote: {bad[0]}")
        read += len(jobs)
    return read


def _timed(files, root, instrument, backend) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = _read_all(files, root, instrument, backend)
    return n, time.perf_counter() - t0


def _ranged_bytes(requests) -> int:
    total = 0
    for method, _, wanted in requests:
        if method == "GET" and wanted and wanted.startswith("bytes="):
            start, _, end = wanted[6:].partition("-")
            total += int(end) - int(start) + 1
    return total


def run_remote_bench(n_spectra: int = 64, repeat: int = 1, seed: int = 0, workdir: str | Path | None = None,
                     backend: str | None = None) -> RemoteBenchResult:
    """Measure local, cold-cache, warm-cache and ranged reads of ``n_spectra`` BOSS spectra.

    Parameters
    ----------
    n_spectra : int
        Synthetic BOSS spectra (spec-lite, mwmVisit and mwmStar files).
    repeat : int
        Rounds of each measurement; the best is kept.
    seed : int
    workdir : path-like, optional
        Where the files and caches go (default: a temporary folder, removed after).
    backend : str, optional
        The FITS backend (default: the readers').

    Returns
    -------
    RemoteBenchResult
    """
    from specq.testing.http_server import ArchiveServer
    from specq.testing.synthetic import make_dataset
    from workers.cache import FileCache
    from workers.remote import RemoteRoot

    own = workdir is None
    work = Path(workdir or tempfile.mkdtemp(prefix="specq-bench-remote-"))
    try:
        folder = work / "data"
        truth = make_dataset(folder, n_boss=n_spectra, n_apogee=0, seed=seed)
        files = sorted({str(p) for p in truth["path"]})
        size = sum((folder / f).stat().st_size for f in files)
        best = {"local": float("inf"), "cold": float("inf"), "warm": float("inf"), "ranged": float("inf")}
        counts: dict[str, int] = {}
        with ArchiveServer(folder) as server:
            _read_all(files[:1], folder, "boss", backend)  # imports and first-call costs, not measured
            for round_ in range(repeat):
                n, best["local"] = _best(best["local"], _timed(files, folder, "boss", backend))
                cache = work / f"cache-{round_}"
                root = RemoteRoot(server.url, FileCache(cache, 1 << 40), timeout=60.0, range_bytes=1 << 40)
                before = server.count("GET")
                _, best["cold"] = _best(best["cold"], _timed(files, root, "boss", backend))
                counts["cold_gets"] = server.count("GET") - before
                before = server.count("GET")
                _, best["warm"] = _best(best["warm"], _timed(files, root, "boss", backend))
                counts["warm_gets"] = server.count("GET") - before
                shutil.rmtree(cache, ignore_errors=True)
                ranged = RemoteRoot(server.url, FileCache(work / "cache-ranged", 1 << 40), timeout=60.0, range_bytes=0)
                first = len(server.requests)
                _, best["ranged"] = _best(best["ranged"], _timed(files, ranged, "boss", backend))
                counts["ranged_bytes"] = _ranged_bytes(server.requests[first:])
        return RemoteBenchResult(len(files), n, size / 1e6, repeat, n / best["local"], n / best["cold"],
                                 n / best["warm"], n / best["ranged"], counts["cold_gets"], counts["warm_gets"],
                                 counts["ranged_bytes"] / 1e6)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _best(seconds: float, timed: tuple[int, float]) -> tuple[int, float]:
    n, took = timed
    return n, min(seconds, took)


def render(r: RemoteBenchResult) -> str:
    """The figures as a few lines."""
    return "\n".join([
        f"specq bench --remote: {r.n_spectra} BOSS spectra in {r.n_files} files ({r.megabytes:.1f} MB), "
        f"read only (no model), best of {r.repeat}",
        f"  local folder          {r.local_per_s:9.1f} spectra/s",
        f"  HTTP root, cold cache {r.cold_per_s:9.1f} spectra/s   ({r.cold_gets} GETs: every file fetched)",
        f"  HTTP root, warm cache {r.warm_per_s:9.1f} spectra/s   ({r.warm_gets} GETs: a HEAD per file)",
        f"  HTTP root, ranges     {r.ranged_per_s:9.1f} spectra/s   ({r.ranged_megabytes:.1f} MB asked for, "
        f"nothing cached)",
        f"  warm/local = {r.warm_per_s / r.local_per_s:.2f}x, cold/warm = {r.cold_per_s / r.warm_per_s:.2f}x",
    ])


def main_remote_bench(args) -> int:
    """``specq bench --remote`` (``--spectra``, ``--repeat``, ``--json``)."""
    import json

    from workers.settings import load_settings

    result = run_remote_bench(n_spectra=args.spectra, repeat=args.repeat,
                              backend=load_settings().fits_backend)
    print(render(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result.as_dict(), indent=2))
    return 0
