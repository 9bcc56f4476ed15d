"""The engine: warm models, read-ahead and batching — references in, result rows out.

Both ``specq run`` (in-process) and the Celery task call :func:`process`, so the
queue adds transport, not logic. Data flows one way: reference → reader → batch →
device → result row. What happens to one batch is :mod:`workers.batch`; the engine reads
the next batch, and on a device that computes apart from the host prepares it too, while
the current one runs.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import stat
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

# One batch's way through a pipeline; callers also reach these as engine.run_jobs and so on.
from workers.batch import Job, Prepared, finish_jobs, is_out_of_memory, predict_isolating, prepare_jobs, run_jobs
from workers.refs import RefError, SpectrumRef
from workers.remote import RemoteRoot, message_for
from workers.settings import Settings
from workers import metrics, registry
from workers.pipeline import Options, Pipeline, UnloadedPipeline
from workers.spectrum import SpectrumError
from workers.memory import keep_freed_memory

log = logging.getLogger("specq.engine")

_warm: dict[tuple, Pipeline] = {}

def weights_candidates(name: str) -> tuple[str, ...]:
    """Names looked for inside the weights folder for pipeline ``name`` (its spec's ``weights``), first found wins."""
    return registry.get(name).weights


def published_weights(name: str, settings: Settings, candidates: Sequence[str] | None = None) -> Path | None:
    """The installed weights of pipeline ``name`` in the weights folder (``settings.weights_cache``), or None."""
    from workers.weights.install import find_installed

    return find_installed(settings.weights_cache, weights_candidates(name) if candidates is None else candidates)


def get_pipeline(name: str, settings: Settings, weights=None, device: str | None = None, **options) -> Pipeline:
    """The warm pipeline of this process: built on first use, reused for every task after.

    ``weights`` None → the weights installed in the weights folder (``specq weights
    install``); when there are none, the seeded demo weights if ``settings.demo_weights``,
    else :class:`~workers.weights.verify.NoWeightsError`. Models are built in the process
    that runs the tasks (the Celery child, never the forking parent), so CUDA is first
    touched there. ``options`` are the pipeline class's own keyword arguments (batch size,
    catalog…); what varies per message is passed to :meth:`Pipeline.predict` instead.
    """
    spec = registry.get(name)
    weights = weights or published_weights(name, settings)
    if weights is None and not settings.demo_weights and weights_candidates(name):
        from workers.weights.verify import NoWeightsError, no_weights_message

        raise NoWeightsError(no_weights_message(name, settings.weights_cache, weights_candidates(name),
                                                 settings.weights_manifests))
    if weights is None and settings.demo_weights:
        weights = spec.demo_weights_path(settings.weights_cache)
    device = device or settings.device
    pipeline_cls = spec.load_class()
    # A constructor parameter named like a setting (AstroNN's ``catalog``) gets the setting.
    accepted = inspect.signature(pipeline_cls.__init__).parameters
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name in accepted and f.name not in options and f.name != "device" and value is not None:
            options[f.name] = value
    key = (name, str(weights), device, tuple(sorted((k, str(v)) for k, v in options.items())))
    if key not in _warm:
        if not _warm:
            keep_freed_memory()
        t0 = time.perf_counter()
        _warm[key] = pipeline_cls(weights=weights, device=device, **options)
        p = _warm[key]
        log.info("loaded %s (%s%s) in %.1f s", name, p.model_sha256[:12], ", DEMO weights" if p.demo else "",
                 time.perf_counter() - t0)
    return _warm[key]


def unloaded_pipeline(name: str) -> Pipeline:
    """A stand-in for pipeline ``name`` built from its schema alone, without a model.

    Used when :func:`get_pipeline` fails for good: it writes the flagged rows (the
    schema's exception flag, NaN fields) the spectra are still owed. Its rows carry
    ``model_sha256 = workers.pipeline.UNLOADED_MODEL_SHA`` and ``demo_weights = False``.

    Parameters
    ----------
    name : str
        A registered pipeline (see :mod:`workers.registry`).

    Returns
    -------
    UnloadedPipeline
        ``predict`` always raises; ``failed_row`` works.
    """
    return UnloadedPipeline(registry.get(name))


def read_jobs(ref: SpectrumRef, data_root: Path, instrument: str, backend: str | None = None,
              last_attempt: bool = False) -> list[Job]:
    """Read the spectrum a reference names (every matching one for a file-level reference).

    Parameters
    ----------
    ref : SpectrumRef
    data_root : Path or RemoteRoot
        What reference paths are relative to (see :func:`workers.remote.data_root`).
    instrument : {"boss", "apogee"}
        Which spectra a file-level reference expands to.
    backend : str, optional
        FITS backend (see :mod:`workers.readers`).
    last_attempt : bool
        True when the queue will not retry the message again. A transient read problem
        then becomes a flagged `Job` for the spectrum (or reference) it concerns, and
        the message's other spectra go on, instead of raising.

    Returns
    -------
    list of Job
        A bad file or reference becomes a `Job` with an error.

    Raises
    ------
    TransientReadError, OSError
        Unless ``last_attempt``: the file is not there yet or could not be read now
        (on a network filesystem it may appear later), for the queue to retry.
    """
    from workers import readers

    # Empty tuple: an except clause that matches nothing, so early attempts still raise.
    transient = (readers.TransientReadError, OSError) if last_attempt else ()
    path = None
    try:
        _refuse_broken_link(ref, data_root)
        path = _resolve(ref, data_root, backend)
        _refuse_special_file(ref, path)
        if ref.hdu is None or ref.row is None:
            slots = readers.list_spectra(path, instrument, backend=backend)
            if not slots:
                raise SpectrumError(f"{ref.path}: holds no {instrument.upper()} spectrum")
            refs = [SpectrumRef(ref.path, s.hdu, s.row, ids={**s.ids, **ref.ids}, photometry=ref.photometry,
                                local_file=ref.local_file)
                    for s in slots]
        else:
            refs = [ref]
        jobs = []
        for r in refs:
            try:
                spectrum = readers.read_spectrum(path, r.hdu, r.row, rel_path=r.path, backend=backend)
            except transient as exc:  # flag this spectrum only; the file's others may be fine
                jobs.append(Job(r, error=_unreadable(r, exc)))
                continue
            if r.photometry:
                spectrum.meta["ref_photometry"] = dict(r.photometry)
            jobs.append(Job(r, spectrum))
        return jobs
    except (SpectrumError, RefError) as exc:
        return [Job(ref, error=message_for(str(exc), path))]
    except transient as exc:
        return [Job(ref, error=_unreadable(ref, exc))]


def _resolve(ref: SpectrumRef, data_root, backend: str | None) -> Path:
    """The file a reference names: under a folder, or from a URL root (fetched or read by ranges)."""
    if isinstance(data_root, RemoteRoot) and ref.local_file is None:
        return data_root.locate(ref.path, ranged=backend in (None, "native"))
    return ref.resolve(data_root)


def _refuse_broken_link(ref: SpectrumRef, data_root) -> None:
    """`TransientReadError` naming the link for a reference that is a link to nothing (its
    target may still appear): resolved, the reader would name only the missing target."""
    from workers import readers

    if isinstance(data_root, RemoteRoot) and ref.local_file is None:
        return  # a URL root has no links; its errors name the URL
    link = os.fspath(ref.local_file) if ref.local_file is not None else os.path.join(os.fspath(data_root), ref.path)
    try:
        is_link = stat.S_ISLNK(os.lstat(link).st_mode)
    except (OSError, ValueError):  # missing, or a name the OS refuses: the resolution says why
        return
    if is_link and not os.path.exists(link):
        raise readers.TransientReadError(f"{ref.path}: a broken link (to {os.readlink(link)})")


def _refuse_special_file(ref: SpectrumRef, path: Path) -> None:
    """`SpectrumError` for a folder, FIFO, device or socket: reading a FIFO or a device would
    block or never end. A file that cannot be examined passes: the reader says why."""
    try:
        mode = path.stat().st_mode
    except OSError:  # missing, or a name the OS refuses: the reader classifies it
        return
    if not stat.S_ISREG(mode):
        what = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise SpectrumError(f"{ref.path}: {what}, not a spectrum file")


def _unreadable(ref: SpectrumRef, exc: BaseException) -> str:
    """The error of a spectrum still unreadable when the queue gives up (and log it)."""
    log.warning("%s: still unreadable on the last attempt, flagged: %s", ref.key, exc, extra={"spectrum": ref.key})
    return f"still unreadable on the last attempt: {type(exc).__name__}: {exc}"


def reading(settings: Settings) -> dict:
    """The reading keywords of :func:`iter_process` a worker's settings ask for."""
    return {"readers": settings.reader_count, "reader_kind": settings.reader_kind,
            "read_timeout": settings.read_timeout}


def growing_chunks(refs: list, size: int) -> list[list]:
    """``refs`` in batches of 1/8, 1/4, 1/2 of ``size``, then ``size``.

    Only the first batch is read while the device waits; each next one (twice as big)
    is read while the device works on the one before.
    """
    chunks, start, step = [], 0, max(1, size // 8)
    while start < len(refs):
        chunks.append(refs[start:start + step])
        start += step
        step = min(size, 2 * step)
    return chunks


def iter_process(pipeline: Pipeline, refs: Sequence[SpectrumRef], data_root, *, batch_size: int | None = None,
                 task_id: str = "", backend: str | None = None, last_attempt: bool = False,
                 options: Options | None = None, readers: int = 1, reader_kind: str = "process",
                 read_timeout: float = 300.0, prepare_ahead: bool | None = None) -> Iterator[list[dict]]:
    """Rows batch by batch, in the order of ``refs``; files are read while batches compute.

    ``options``: this call's draws, seed and precision (None → the pipeline's defaults).
    ``last_attempt`` (the queue will not retry): a spectrum that stays unreadable or
    does not fit in device memory becomes its own flagged row instead of raising for
    the whole message (see :func:`read_jobs`, :func:`predict_isolating`).

    ``readers`` > 1 reads the references in that many readers of ``reader_kind`` (see
    :mod:`workers.reader_pool`): the batches are the same as with one reader, so are their
    rows, but a batch is computed as soon as its files are read, even while an earlier
    one still waits for a slow file. A reader that dies on a file or spends more than
    ``read_timeout`` seconds on it raises :class:`~workers.readers.TransientReadError`
    (the queue retries the message), or on the last attempt flags that file's spectra.

    ``prepare_ahead`` (None → the pipeline's :attr:`~workers.pipeline.Pipeline.prepares_ahead`):
    each batch is also prepared (:func:`prepare_jobs`: checks, noise, copies to the device)
    while the device runs the batch before, one batch ahead. The rows are the same.
    """
    if not isinstance(data_root, RemoteRoot):
        data_root = Path(data_root)
    size = batch_size or pipeline.batch_size or 8
    chunks = growing_chunks(list(refs), size)
    if not chunks:
        return
    read = partial(read_jobs, data_root=data_root, instrument=pipeline.instrument, backend=backend,
                   last_attempt=last_attempt)
    if readers > 1 and reader_kind == "process" and isinstance(data_root, RemoteRoot):
        reader_kind = "thread"  # a URL root's cache and connections stay in this process; its reads wait on I/O
    ahead = pipeline.prepares_ahead if prepare_ahead is None else prepare_ahead
    prepare = partial(prepare_jobs, pipeline, options=options)
    finish = partial(finish_jobs, pipeline, task_id=task_id, last_attempt=last_attempt)
    if readers > 1:
        yield from _read_in_parallel(pipeline, chunks, read, readers, reader_kind, read_timeout, prepare, finish,
                                     last_attempt, ahead)
        return

    def read_chunk(chunk):
        with metrics.stage(pipeline.name, "read"):
            jobs = [job for ref in chunk for job in read(ref)]
        return prepare(jobs) if ahead else jobs  # prepared in the reading thread, while the device runs

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="specq-read") as pool:
        next_chunk = pool.submit(read_chunk, chunks[0])
        for i in range(len(chunks)):
            batch = next_chunk.result()
            if i + 1 < len(chunks):
                next_chunk = pool.submit(read_chunk, chunks[i + 1])
            yield finish(batch if ahead else prepare(batch))


_GROUP = 8  # references per reader call, at most


def _read_group(read: Callable[[SpectrumRef], list[Job]], refs: list[SpectrumRef]) -> list[Job]:
    """Jobs of a few references, in a reader (and the tests' fault hooks)."""
    jobs = []
    for ref in refs:
        _reader_fault_injection(ref)
        jobs.extend(read(ref))
    return jobs


def _reader_fault_injection(ref: SpectrumRef) -> None:
    """Test hooks, in reader processes only: ``SPECQ_FAULT_KILL_READER=substring`` kills the
    reader (SIGKILL) on a matching path, ``SPECQ_FAULT_HANG_READER=substring`` makes it hang."""
    import multiprocessing
    import os
    import signal

    if multiprocessing.parent_process() is None:
        return  # never the worker itself (thread readers)
    if os.environ.get("SPECQ_FAULT_KILL_READER") and os.environ["SPECQ_FAULT_KILL_READER"] in ref.path:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("SPECQ_FAULT_HANG_READER") and os.environ["SPECQ_FAULT_HANG_READER"] in ref.path:
        while True:
            time.sleep(60)


def _read_in_parallel(pipeline: Pipeline, chunks: list[list[SpectrumRef]], read: Callable, readers: int,
                      kind: str, timeout: float, prepare: Callable[[list[Job]], Prepared],
                      finish: Callable[[Prepared], list[dict]], last_attempt: bool,
                      ahead: bool = False) -> Iterator[list[dict]]:
    """:func:`iter_process` with N readers: each chunk computed once all its files are read.

    Up to two batches' files are read ahead (at least four per reader), so the device
    works on whichever batch is complete while a slow file holds up only its own. With
    ``ahead`` a complete batch is prepared in a thread of its own while the device
    finishes the batch completed before it.
    """
    from workers.reader_pool import reader_pool

    # A reader call reads a few references: its cost to send and to collect is shared.
    groups: list[list[SpectrumRef]] = []
    chunk_of: list[int] = []
    for i, chunk in enumerate(chunks):
        step = max(1, min(_GROUP, len(chunk) // readers))
        for start in range(0, len(chunk), step):
            groups.append(chunk[start:start + step])
            chunk_of.append(i)
    missing = [chunk_of.count(i) for i in range(len(chunks))]
    read_of: list[list[Job] | None] = [None] * len(groups)
    groups_of: list[list[int]] = [[] for _ in chunks]
    for g, i in enumerate(chunk_of):
        groups_of[i].append(g)
    done: dict[int, list[dict]] = {}
    next_out = 0
    window = max(2 * max(len(c) for c in chunks) // _GROUP, 4 * readers)

    pool = reader_pool(readers, kind, timeout)
    call = partial(_read_group, read)

    def lost(group: list[SpectrumRef], exc: Exception) -> list[Job]:
        from workers.readers import TransientReadError

        if len(group) > 1:  # which of the group's files was it? Each alone, in order
            return [job for _, jobs in pool.read(call, [[ref] for ref in group], 1, lost) for job in jobs]
        (ref,) = group
        if not last_attempt:
            raise TransientReadError(f"{ref.path}: {exc} (will retry)")
        return [Job(ref, error=_unreadable(ref, TransientReadError(f"{ref.path}: {exc}")))]

    preparing: list[tuple[int, Future]] = []  # at most one batch, prepared while the device runs another
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="specq-prepare") as preparer:
        t_read = time.perf_counter()
        for index, jobs in pool.read(call, groups, window, lost):
            read_of[index] = jobs
            chunk = chunk_of[index]
            missing[chunk] -= 1
            if missing[chunk]:
                continue
            metrics.observe_stage(pipeline.name, "read", time.perf_counter() - t_read)
            t_read = time.perf_counter()
            jobs_in_order = [job for g in groups_of[chunk] for job in read_of[g]]
            for g in groups_of[chunk]:
                read_of[g] = None  # the spectra go with their batch
            if not ahead:
                done[chunk] = finish(prepare(jobs_in_order))
            else:
                preparing.append((chunk, preparer.submit(prepare, jobs_in_order)))
                while len(preparing) > 1:  # the device takes the older batch while the newer one prepares
                    older, batch = preparing.pop(0)
                    done[older] = finish(batch.result())
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
        for older, batch in preparing:
            done[older] = finish(batch.result())
        while next_out in done:
            yield done.pop(next_out)
            next_out += 1


def process(pipeline: Pipeline, refs: Sequence[SpectrumRef], data_root, *,
            progress: Callable[[int], None] | None = None, **kwargs) -> list[dict]:
    """All rows for ``refs`` (see :func:`iter_process`)."""
    rows: list[dict] = []
    for batch in iter_process(pipeline, refs, data_root, **kwargs):
        rows.extend(batch)
        if progress:
            progress(len(batch))
    return rows
