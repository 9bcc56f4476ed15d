"""Prometheus metrics of a worker process, served on ``SPECQ_METRICS_PORT``.

Metric names (the Grafana dashboard ``deploy/grafana/specq.json`` uses these):

``specq_spectra_total{pipeline, outcome}``
    Result rows written. ``outcome``: ``ok`` (no bad flag), ``flagged`` (a result with
    the pipeline's bad flag set: low S/N, out of range…), ``failed`` (no result: the
    spectrum could not be read or processed; the row carries an error).
``specq_batch_spectra{pipeline}``
    Histogram of the spectra in each batch handed to the model.
``specq_stage_seconds{pipeline, stage}``
    Histogram of stage latencies. ``read``: reading one batch's files (in the read-ahead
    thread, overlapping the device); ``predict``: one ``Pipeline.predict`` call on a batch
    — preprocessing, forward passes and conversion together, since a pipeline's predict
    does not expose them separately to the engine; ``write``: writing one message's rows
    to the result store.
``specq_queue_wait_seconds{pipeline}``
    Histogram of the time from enqueue (the producer's ``specq_sent`` header) to the
    start of the task's first attempt.
``specq_worker_up``, ``specq_worker_busy``
    Gauges: 1 while the process serves; tasks running now.
``specq_lane_messages{queue, lane}``, ``specq_lane_oldest_seconds{queue, lane}``
    Gauges read from the broker at each scrape, by the first process of each worker
    (``tasks.brokers.LaneGauges``): messages waiting in each lane (ordinary, bulk) and the
    oldest one's age where the broker tells it.
``specq_device_memory_bytes{device, kind}``
    Read at each scrape: on CUDA ``allocated`` and ``reserved`` (torch's caching
    allocator); otherwise the process's resident memory (``kind="rss"``).

With a prefork pool, each child process serves its own metrics on ``port + i`` (``i``
the child's index in the pool, 0 … concurrency-1), so a worker with ``-c 4`` and
``SPECQ_METRICS_PORT=9808`` answers on 9808–9811; a solo or threads worker serves on
``port``. No shared files (Prometheus' multiprocess mode) to clean up, and every
target's ``specq_worker_up`` says whether that child lives.

Everything here is cheap when no server is started (``specq run`` counts into
in-memory metrics nobody reads).
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("specq.metrics")

OUTCOMES = ("ok", "flagged", "failed")
STAGES = ("read", "predict", "write")

SPECTRA = Counter("specq_spectra", "Result rows written, by pipeline and outcome (ok, flagged, failed).",
                  ["pipeline", "outcome"])
BATCH_SPECTRA = Histogram("specq_batch_spectra", "Spectra in each batch handed to the model.", ["pipeline"],
                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
STAGE_SECONDS = Histogram("specq_stage_seconds", "Latency of a stage: read (a batch's files), predict "
                          "(a batch), write (a message's rows).", ["pipeline", "stage"],
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
QUEUE_WAIT = Histogram("specq_queue_wait_seconds", "Seconds from enqueue to the start of the task.", ["pipeline"],
                       buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400))
WORKER_UP = Gauge("specq_worker_up", "1 while this worker process serves metrics.")
WORKER_BUSY = Gauge("specq_worker_busy", "Tasks this worker process is running now.")

_server_lock = threading.Lock()
_server_port: int | None = None


def outcome(row: dict) -> str:
    """``ok``, ``flagged`` or ``failed`` for a result row (see the module notes)."""
    if row.get("error"):
        return "failed"
    return "flagged" if row.get("flag_bad") else "ok"


def count_rows(pipeline: str, rows: Iterable[dict]) -> None:
    """Count written rows by outcome."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for row in rows:
        counts[outcome(row)] += 1
    for name, n in counts.items():
        if n:
            SPECTRA.labels(pipeline, name).inc(n)


def observe_batch(pipeline: str, n_spectra: int) -> None:
    BATCH_SPECTRA.labels(pipeline).observe(n_spectra)


def observe_stage(pipeline: str, stage: str, seconds: float) -> None:
    STAGE_SECONDS.labels(pipeline, stage).observe(seconds)


@contextmanager
def stage(pipeline: str, name: str) -> Iterator[None]:
    """Time the block as stage ``name`` of ``pipeline`` (also when it raises)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        observe_stage(pipeline, name, time.perf_counter() - t0)


def observe_queue_wait(pipeline: str, sent: float | str | None) -> None:
    """The wait of a message enqueued at POSIX time ``sent`` (ignored when unknown)."""
    try:
        wait = time.time() - float(sent)
    except (TypeError, ValueError):
        return
    QUEUE_WAIT.labels(pipeline).observe(max(0.0, wait))


class DeviceMemoryCollector:
    """``specq_device_memory_bytes``, read at scrape time (CUDA memory, else resident memory)."""

    def collect(self):
        family = GaugeMetricFamily("specq_device_memory_bytes", "Memory this process holds: on CUDA torch's "
                                   "allocated and reserved bytes, else the resident set.",
                                   labels=["device", "kind"])
        torch = sys.modules.get("torch")  # never import torch for a scrape
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            for index in range(torch.cuda.device_count()):
                family.add_metric([f"cuda:{index}", "allocated"], float(torch.cuda.memory_allocated(index)))
                family.add_metric([f"cuda:{index}", "reserved"], float(torch.cuda.memory_reserved(index)))
        else:
            family.add_metric(["cpu", "rss"], float(resident_bytes()))
        yield family


def resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak (other systems)."""
    import os
    import resource

    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes; elsewhere kB


REGISTRY.register(DeviceMemoryCollector())


def serve(port: int, addr: str = "0.0.0.0") -> int | None:
    """Start this process's metrics server on ``port`` (once); returns the port, or None when taken.

    A port in use is logged, not fatal: a worker without metrics still processes spectra.
    """
    global _server_port
    with _server_lock:
        if _server_port is not None:
            return _server_port
        try:
            start_http_server(port, addr=addr)
        except OSError as exc:
            log.error("metrics: cannot serve on port %d (%s); this worker runs without metrics", port, exc)
            return None
        _server_port = port
        WORKER_UP.set(1)
        log.info("metrics on http://%s:%d/metrics", addr, port)
        return port


def serving_port() -> int | None:
    """The port this process serves metrics on, or None."""
    return _server_port
