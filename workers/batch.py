"""A batch of read spectra through a pipeline: prepared, run on the device, made into result rows.

:func:`run_jobs` is the whole step; the engine calls its two halves apart to prepare a
batch (:func:`prepare_jobs`: the host's share) while the device runs the one before
(:func:`finish_jobs`). A failure of the batch is narrowed down to the spectrum that causes
it (:func:`predict_isolating`), which alone becomes a flagged row.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

from workers import metrics
from workers import row as result_row
from workers.interrupt import is_shutdown
from workers.pipeline import Options, Pipeline
from workers.refs import SpectrumRef
from workers.spectrum import Spectrum

log = logging.getLogger("specq.engine")


@dataclass
class Job:
    """One spectrum on its way through the engine: the reference and what was read."""

    ref: SpectrumRef
    spectrum: Spectrum | None = None
    error: str | None = None


def is_out_of_memory(exc: BaseException) -> bool:
    """True for running out of device memory (``torch.cuda.OutOfMemoryError`` or alike)."""
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def predict_isolating(pipeline: Pipeline, spectra: Sequence[Spectrum], options: Options | None = None,
                      last_attempt: bool = False, prepared: Prepared | None = None) -> list[dict]:
    """``pipeline.predict`` that never loses a spectrum to a neighbour's failure.

    ``prepared``: the batch made ready ahead (:func:`prepare_jobs`); the pipeline's
    :meth:`~workers.pipeline.Pipeline.finish` of it stands for the first ``predict`` (a
    failure of either half is narrowed down the same way).

    An exception splits the batch in halves until the failing spectrum stands alone and
    becomes a flagged row. Out of device memory also splits the batch — the one
    out-of-memory policy of specq: pipelines let it propagate. A single spectrum that
    does not fit re-raises (the device is short of memory now, maybe shared or
    fragmented: a worker problem, for the queue to retry), unless ``last_attempt``,
    when it becomes that spectrum's flagged row.

    An exception of the process being stopped (:func:`workers.interrupt.is_shutdown`)
    re-raises at once: it says nothing about the spectra.
    """
    try:
        if prepared is None:
            return pipeline.predict(spectra, options)
        if prepared.failure is not None:
            raise prepared.failure
        return pipeline.finish(prepared.batch)
    except Exception as exc:  # any failure of a batch is narrowed down, never fatal
        if is_shutdown(exc):
            raise
        oom = is_out_of_memory(exc)
        if oom:
            _empty_device_cache()
        if len(spectra) == 1:
            if oom and not last_attempt:
                raise
            if oom:
                log.warning("%s: out of device memory on %s on the last attempt, flagged", pipeline.name,
                            spectra[0].path, extra={"spectrum": _key(spectra[0])})
                return [pipeline.failed_row(f"out of device memory on the last attempt: {type(exc).__name__}: {exc}")]
            log.warning("%s failed on %s: %s", pipeline.name, spectra[0].path, exc,
                        extra={"spectrum": _key(spectra[0])})
            return [pipeline.failed_row(f"{type(exc).__name__}: {exc}")]
        half = len(spectra) // 2
        log.info("%s batch of %d failed (%s); splitting", pipeline.name, len(spectra), type(exc).__name__)
        return (predict_isolating(pipeline, spectra[:half], options, last_attempt)
                + predict_isolating(pipeline, spectra[half:], options, last_attempt))


def _key(spectrum: Spectrum) -> str:
    """A spectrum's identity for log lines (its reference key, ``path:hdu:row``)."""
    return f"{spectrum.path}:{spectrum.hdu}:{spectrum.row}"


def _empty_device_cache():
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Prepared:
    """A batch of jobs made ready for the device (:func:`prepare_jobs`)."""

    jobs: Sequence[Job]
    results: list  # a flagged row for each job that cannot be computed, None for the others
    todo: list[int]  # the jobs to compute
    options: Options | None
    batch: object = None  # the pipeline's prepare() of the todo spectra
    failure: Exception | None = None  # what prepare() raised, for predict_isolating to narrow down
    seconds: float = 0.0  # spent so far on the batch


def prepare_jobs(pipeline: Pipeline, jobs: Sequence[Job], options: Options | None = None) -> Prepared:
    """The host's share of :func:`run_jobs`: flagged rows for unreadable or refused jobs, the rest prepared."""
    t0 = time.perf_counter()
    results: list[dict | None] = [None] * len(jobs)
    todo = []
    for i, job in enumerate(jobs):
        if job.error is None:
            reason = pipeline.refuse_reason(job.spectrum)
            if reason:
                job.error = reason
        if job.error is not None:
            results[i] = pipeline.failed_row(job.error)
        else:
            todo.append(i)
    prepared = Prepared(jobs, results, todo, options)
    if todo:
        try:
            prepared.batch = pipeline.prepare([jobs[i].spectrum for i in todo], options)
        except Exception as exc:  # the batch's failure: predict_isolating narrows it down in finish_jobs
            if is_shutdown(exc):
                raise
            prepared.failure = exc
    prepared.seconds = time.perf_counter() - t0
    return prepared


def finish_jobs(pipeline: Pipeline, prepared: Prepared, task_id: str = "", last_attempt: bool = False) -> list[dict]:
    """The result rows of a prepared batch (see :func:`run_jobs`)."""
    t0 = time.perf_counter()
    jobs, results, todo, options = prepared.jobs, prepared.results, prepared.todo, prepared.options
    if todo:
        metrics.observe_batch(pipeline.name, len(todo))
        with metrics.stage(pipeline.name, "predict"):
            predicted = predict_isolating(pipeline, [jobs[i].spectrum for i in todo], options, last_attempt,
                                          prepared)
        for i, row in zip(todo, predicted):
            results[i] = row
    elapsed = (prepared.seconds + time.perf_counter() - t0) / max(1, len(jobs))
    used = options or getattr(pipeline, "defaults", None)
    draws = used.draws if used is not None else None
    return [result_row.build(pipeline, job.ref, job.spectrum, result=result, task_id=task_id, elapsed=elapsed,
                             draws=draws)
            for job, result in zip(jobs, results)]


def run_jobs(pipeline: Pipeline, jobs: Sequence[Job], task_id: str = "", last_attempt: bool = False,
             options: Options | None = None) -> list[dict]:
    """Result rows for read jobs: predictions for the readable ones, flagged rows for the rest.

    ``last_attempt``: see :func:`predict_isolating`.
    """
    return finish_jobs(pipeline, prepare_jobs(pipeline, jobs, options), task_id, last_attempt)
