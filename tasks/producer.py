"""Producers: turn files or references into chunked Celery messages.

``submit`` is the Python API; ``specq enqueue`` and ``specq watch`` call it. A file is
expanded into one reference per spectrum a pipeline takes (reading headers only), so
every spectrum enqueued ends as exactly one result row. Nothing here imports torch.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

from tasks.app import app
from workers import registry
from tasks.refs import SpectrumRef, relative_to_root
from tasks.settings import Settings

log = logging.getLogger("specq.producer")


@dataclass
class Submission:
    """What a call to :func:`submit` sent."""

    task_ids: dict[str, list[str]] = field(default_factory=dict)
    refs: dict[str, list[SpectrumRef]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # files not readable yet: nothing sent, try later

    @property
    def n_spectra(self) -> int:
        return sum(len(v) for v in self.refs.values())

    @property
    def n_messages(self) -> int:
        return sum(len(v) for v in self.task_ids.values())


class Expanded(NamedTuple):
    """What :func:`expand_file` found in one file."""

    refs: dict[str, list[SpectrumRef]]
    notes: list[str]
    readable: bool = True  # False: not readable yet (still being written?): send nothing now


def expand_file(rel_path: str, pipelines: Sequence[str], data_root: Path) -> Expanded:
    """References for every spectrum of a file that each pipeline takes.

    A file the producer cannot parse is still sent (as a file-level reference) to the
    first pipeline asked for, so that the worker records why as a flagged row.
    """
    from workers.readers import TransientReadError, list_spectra  # numpy/astropy, not torch
    from workers.spectrum import SpectrumError

    path = Path(data_root) / rel_path
    out: dict[str, list[SpectrumRef]] = {}
    notes: list[str] = []
    failures: list[str] = []
    for pipeline in pipelines:
        try:
            slots = list_spectra(path, registry.get(pipeline).instrument)
        except TransientReadError as exc:  # not readable yet: say so, send nothing, try again later
            notes.append(f"{rel_path}: not readable now ({exc})")
            return Expanded({}, notes, readable=False)
        except SpectrumError as exc:
            failures.append(str(exc))
            notes.append(f"{rel_path}: {pipeline}: {exc}")
            continue
        out[pipeline] = [SpectrumRef(rel_path, s.hdu, s.row, ids={k: v for k, v in s.ids.items() if v is not None})
                         for s in slots]
    if not any(out.values()):
        if len(failures) == len(pipelines):
            # Unreadable for every pipeline: let one worker say why, as a row.
            out = {pipelines[0]: [SpectrumRef(rel_path)]}
        else:
            notes.append(f"{rel_path}: no spectrum for {', '.join(pipelines)}")
    return Expanded(out, notes)


def _coerce_ref(item) -> SpectrumRef | None:
    if isinstance(item, SpectrumRef):
        return item
    if isinstance(item, Mapping):
        return SpectrumRef.from_json(item)
    return None


def send_message(pipeline: str, payload: list, options: Mapping | None = None, *, settings: Settings | None = None,
                 celery_app=None) -> str:
    """Send one message of JSON references to ``pipeline``'s queue; returns its task id.

    The message carries its enqueue time (header ``specq_sent``, POSIX seconds): ``specq
    status`` shows the oldest waiting message's age, and workers measure the queue wait.
    """
    celery_app = celery_app or app
    settings = settings or celery_app.specq_settings
    async_result = celery_app.send_task(registry.get(pipeline).task_name, args=[payload], kwargs={"options": dict(options or {})},
                                        queue=settings.queue_for(pipeline), serializer="json",
                                        headers={"specq_sent": time.time()})
    return async_result.id


def submit(items: Iterable, pipelines: str | Sequence[str] = ("bossnet",), *, chunk_size: int | None = None,
           options: Mapping | None = None, settings: Settings | None = None, celery_app=None,
           progress: Callable[[int], None] | None = None) -> Submission:
    """Enqueue spectra for the given pipelines.

    Parameters
    ----------
    items : iterable
        File paths (absolute, relative to the current folder or to the data root) — each
        expanded into its spectra — or `SpectrumRef` / dicts naming one spectrum (sent
        to every pipeline given; a worker flags one its pipeline cannot take).
    pipelines : str or sequence
        ``"bossnet"``, ``"astronn_dist"`` or both (``"bossnet,astronn_dist"``).
    chunk_size : int, optional
        References per message (default ``settings.chunk_size_for(pipeline)``: 32 for
        BossNet, 128 for AstroNN distances).
    options : dict, optional
        ``draws``, ``seed`` passed to the workers.
    progress : callable, optional
        Called with 1 after each item is expanded (a progress bar's ``update``).

    Returns
    -------
    Submission
        Task ids and references by pipeline, and files skipped with the reason.
    """
    celery_app = celery_app or app
    settings = settings or celery_app.specq_settings
    names = registry.parse(pipelines)
    chunks = {p: int(chunk_size or settings.chunk_size_for(p)) for p in names}
    if min(chunks.values(), default=1) < 1:
        raise ValueError("chunk_size must be at least 1")
    result = Submission(refs={p: [] for p in names})
    for item in items:
        ref = _coerce_ref(item)
        if ref is not None:
            for p in names:
                result.refs[p].append(ref)
            continue
        rel = relative_to_root(os.fspath(item), settings.data_root)
        expanded = expand_file(rel, names, settings.data_root)
        result.skipped += expanded.notes
        if not expanded.readable:
            result.unreadable.append(rel)
        for p, refs in expanded.refs.items():
            result.refs[p].extend(refs)
        if progress:
            progress(1)
    for p, refs in result.refs.items():
        ids = result.task_ids.setdefault(p, [])
        chunk = chunks[p]
        for i in range(0, len(refs), chunk):
            payload = [r.to_json() for r in refs[i:i + chunk]]
            ids.append(send_message(p, payload, options, settings=settings, celery_app=celery_app))
    for note in result.skipped:
        log.info("skipped %s", note)
    return result


def read_list(path: str | os.PathLike) -> list[str]:
    """File names from a list file: one per line; blank lines and ``#`` comments ignored."""
    lines = Path(path).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
