"""Producers: turn files or references into chunked Celery messages.

``submit`` is the Python API; ``specq enqueue`` and ``specq watch`` call it. A file is
expanded into one reference per spectrum a pipeline takes (reading headers only), so
every spectrum enqueued ends as exactly one result row. Nothing here imports torch.
"""
from __future__ import annotations

import logging
import os
import stat
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

from tasks.app import get_app
from tasks.brokers import CONFIRM_TIMEOUT_S
from workers import ledger, registry
from workers.readers.formats import FILE_PATTERNS
from workers.refs import RefError, SpectrumRef, check_text, find_user_path, normalize_path
from workers.settings import Settings, is_url

log = logging.getLogger("specq.producer")


@dataclass
class Submission:
    """What a call to :func:`submit` sent."""

    task_ids: dict[str, list[str]] = field(default_factory=dict)
    refs: dict[str, list[SpectrumRef]] = field(default_factory=dict)
    # Notes on the input: files or spectra not sent, duplicates dropped, and why a file was sent
    # whole (a worker then writes its flagged row).
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


class InputError(ValueError):
    """A path a user gave that names nothing a pipeline can read (the message says why)."""


@dataclass(frozen=True)
class Input:
    """One file a user named (directly or inside a folder they named).

    Attributes
    ----------
    name : str
        What its rows call it (their ``path``): relative to the data root when the file
        is under it, otherwise exactly as the user wrote it. A symlink keeps its own name.
    file : Path
        Where it is read: absolute, symlinks kept.
    under_root : bool
        ``name`` is relative to the data root.
    """

    name: str
    file: Path
    under_root: bool


def _file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is, in words."""
    for test, what in ((stat.S_ISREG, None), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _broken_link(path: Path) -> bool:
    """A symlink to nothing: sent like a file, so that its row says what it is."""
    return path.is_symlink() and not path.exists()


def _search_folder(folder: Path) -> list[Path]:
    """Spectrum files under ``folder`` (recursively, hidden names skipped), sorted."""
    import fnmatch

    patterns = FILE_PATTERNS

    def named_like_a_spectrum(name: str) -> bool:
        return not name.startswith(".") and any(fnmatch.fnmatch(name, p) for p in patterns)

    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        # A folder named like a spectrum file is an input too: its row says it is a folder.
        found += [Path(dirpath) / d for d in dirnames if named_like_a_spectrum(d)]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not named_like_a_spectrum(d))
        found += [Path(dirpath) / n for n in filenames if named_like_a_spectrum(n)]
    return sorted(found)


def locate(item: str | os.PathLike, data_root: str | os.PathLike, *, confined: bool) -> list[Input]:
    """The files a user's path names: itself, or a folder's spectrum files.

    Parameters
    ----------
    item : path-like
        Absolute, or relative to the current folder (tried first) or to the data root.
    data_root : path-like
    confined : bool
        True for the queue: every file must be under the data root, symlinks included
        (workers read nothing outside it). False for ``specq run``, which reads what
        its user names and calls a file outside the root by the name given.

    Returns
    -------
    list of Input
        One for a file; a folder's spectrum files (:data:`workers.readers.formats.FILE_PATTERNS`) in order.

    Raises
    ------
    InputError
        Nothing there, a folder without spectrum files, a FIFO, device or socket, a
        path outside the data root (``confined``) or a reference path too long.
    """
    given = os.fspath(item)
    found = find_user_path(item, data_root)
    if found is None:
        raise InputError(f"{given}: no such file (looked in the current folder and under {data_root})")
    name, file = found
    try:
        kind = None if _broken_link(file) else _file_kind(file.stat().st_mode)
    except OSError as exc:
        raise InputError(f"{given}: cannot be examined: {exc.strerror or exc}") from exc
    if kind == "a folder":
        files = _search_folder(file)
        if not files:
            raise InputError(f"{given}: a folder with no spectrum files in it "
                             f"(looked for {', '.join(FILE_PATTERNS)})")
        inside = [f.relative_to(file).as_posix() for f in files]
        return [_one_input(os.path.join(given, rel), f,
                           None if name is None else (rel if name == "." else f"{name}/{rel}"), data_root, confined)
                for rel, f in zip(inside, files)]
    if kind is not None:
        raise InputError(f"{given}: {kind}, not a spectrum file")
    return [_one_input(given, file, name, data_root, confined)]


def _one_input(given: str, file: Path, name: str | None, data_root, confined: bool) -> Input:
    try:
        check_text(given)
    except RefError as exc:
        raise InputError(str(exc)) from None
    root = Path(data_root).resolve()
    if name is None:
        if confined and not root.is_dir():
            missing = "does not exist" if not root.exists() else "is not a folder"
            raise InputError(f"{given}: outside the data root {root}, which {missing} (set SPECQ_DATA_ROOT)")
        if confined:
            raise InputError(f"{given}: outside the data root {root} (set SPECQ_DATA_ROOT)")
        return Input(given, file, False)
    if confined:
        real = file.resolve()
        if real != root and root not in real.parents:
            raise InputError(f"{given}: a symlink that leads outside the data root {root} (to {real})")
    try:
        # The store's key limits a path's length; specq run writes to no store.
        return Input(normalize_path(name, limit=confined), file, True)
    except RefError as exc:
        raise InputError(f"{given}: {exc}") from exc


def unique_inputs(inputs: Sequence[Input]) -> tuple[list[Input], list[str]]:
    """Inputs with each file once (the first name given wins), and a note for each dropped one.

    The same file named twice (``a.fits``, ``./a.fits``, an absolute path or a link to
    it) is one spectrum: it gets one row.
    """
    seen: dict[tuple[int, int], Input] = {}
    kept, notes = [], []
    for inp in inputs:
        try:
            st = inp.file.stat()
            identity = (st.st_dev, st.st_ino)
        except OSError:  # gone since it was located: keep it, the reader says what happened
            kept.append(inp)
            continue
        first = seen.setdefault(identity, inp)
        if first is inp:
            kept.append(inp)
        else:
            notes.append(f"{inp.name}: the same file as {first.name}, given again: one row")
    return kept, notes


def expand_input(inp: Input, pipelines: Sequence[str], *, local: bool = False,
                 backend: str | None = None, wait_unreadable: bool = False) -> Expanded:
    """References for every spectrum of one file that each pipeline takes.

    A file the producer cannot parse or open (permissions, a broken link, half copied) is
    still sent, as a file-level reference, so that a worker reads it then or records why as
    a flagged row: to each pipeline asked for that reads the product its name follows
    (:func:`tasks.sdss_names.pipelines_for_file`), else to the first pipeline that failed
    on it (the first asked for, when it cannot be opened). Where other pipelines do find
    their spectra, each pipeline that failed gets the file-level reference, and so a flagged
    row of its own. ``wait_unreadable`` (``specq watch``): a file that
    cannot be opened now is not sent (``readable`` False) and is looked at again later.
    ``local`` (``specq run``): the references read ``inp.file`` directly. ``backend``: the
    FITS backend (``Settings.fits_backend``); None, the readers' default.
    """
    from tasks.sdss_names import pipelines_for_file
    from workers.readers import TransientReadError, list_spectra  # numpy/astropy, not torch
    from workers.spectrum import SpectrumError

    local_file = str(inp.file) if local else None
    out: dict[str, list[SpectrumRef]] = {}
    notes: list[str] = []
    failed: list[str] = []  # the pipelines whose spectra the file should hold but that cannot be listed
    errors: dict[str, list[str]] = {}  # each reason once, with the pipelines it concerns
    for i, pipeline in enumerate(pipelines):
        try:
            slots = list_spectra(inp.file, registry.get(pipeline).instrument, backend=backend)
        except TransientReadError as exc:
            if wait_unreadable:  # not readable yet: say so, send nothing, try again later
                notes.append(f"{inp.name}: not readable now ({exc})")
                return Expanded({}, notes, readable=False)
            notes.append(f"{inp.name}: cannot be opened: {exc}")
            # Not listed: this pipeline and the later ones of the file's product get the whole
            # file, and a reader says why in its flagged row.
            named = pipelines_for_file(inp.name, pipelines[i:])  # of the product the file's name gives
            failed += [p for p in pipelines[i:] if p == pipeline or p in named]
            break
        except SpectrumError as exc:
            failed.append(pipeline)
            errors.setdefault(str(exc), []).append(pipeline)
            continue
        out[pipeline] = [SpectrumRef(inp.name, s.hdu, s.row, ids={k: v for k, v in s.ids.items() if v is not None},
                                     local_file=local_file)
                         for s in slots]
    notes += [f"{inp.name}: {'every pipeline' if len(names) > 1 and names == list(pipelines) else ', '.join(names)}: "
              f"{reason}" for reason, names in errors.items()]
    if not any(out.values()):
        if failed:
            # Nothing to list and something wrong. The pipelines of the product the name gives
            # each take the whole file (a half-copied mwmStar, whole once read, gives all its
            # spectra, or each of them a row saying why), less those that listed it and found
            # nothing of theirs (a BOSS-only mwmStar); for any other name, one worker says why.
            takers = [p for p in pipelines_for_file(inp.name, pipelines) if p not in out] or failed[:1]
            out = {p: [SpectrumRef(inp.name, local_file=local_file)] for p in takers}
        else:
            notes.append(f"{inp.name}: no spectrum for {', '.join(pipelines)}")
    else:
        # The file is read, but not a part of it that some pipelines take (an mwmStar whose
        # BOSS HDU fails its checksum): each of them says why in a row of its own.
        for pipeline in failed:
            out[pipeline] = [SpectrumRef(inp.name, local_file=local_file)]
    return Expanded(out, notes)


def expand_file(rel_path: str, pipelines: Sequence[str], data_root: Path, *,
                backend: str | None = None) -> Expanded:
    """:func:`expand_input` for a file named relative to the data root."""
    return expand_input(Input(rel_path, Path(data_root) / rel_path, True), pipelines, backend=backend)


def _coerce_ref(item) -> SpectrumRef | None:
    if isinstance(item, SpectrumRef):
        return item
    if isinstance(item, Mapping):
        return SpectrumRef.from_json(item)
    return None


def send_message(pipeline: str, payload: list, options: Mapping | None = None, *, settings: Settings | None = None,
                 celery_app=None, bulk: bool = False) -> str:
    """Send one message of JSON references to ``pipeline``'s queue; returns its task id.

    ``bulk``: into the queue's bulk lane, served after the ordinary lane (see
    :mod:`tasks.lanes`). The message carries its enqueue time (header ``specq_sent``,
    POSIX seconds): ``specq status`` shows the oldest waiting message's age, and workers
    measure the queue wait.
    Its references are recorded in the ledger of what was sent (:mod:`workers.ledger`)
    before it is published.
    """
    from tasks.lanes import BULK, ORDINARY, lane_queue

    celery_app = celery_app or get_app(settings)
    settings = settings or celery_app.specq_settings
    queue = lane_queue(settings.queue_for(pipeline), BULK if bulk else ORDINARY)
    task_id = str(uuid.uuid4())
    # In the ledger before the broker has it: a message the broker loses is still known.
    ledger.record(ledger_store(settings.database), pipeline, payload, task_id, options)
    async_result = celery_app.send_task(registry.get(pipeline).task_name, args=[payload], kwargs={"options": dict(options or {})},
                                        queue=queue, serializer="json", headers={"specq_sent": time.time()},
                                        task_id=task_id, confirm_timeout=CONFIRM_TIMEOUT_S)
    return async_result.id


@lru_cache(maxsize=4)
def ledger_store(database_url: str):
    """The result store that keeps the ledger of what was sent (one per database, per process)."""
    from workers.store import ResultStore

    return ResultStore(database_url)


def submit(items: Iterable = (), pipelines: str | Sequence[str] | None = None, *, chunk_size: int | None = None,
           options: Mapping | None = None, settings: Settings | None = None, celery_app=None,
           progress: Callable[[int], None] | None = None, release: str | None = None, product: str | None = None,
           table: str | os.PathLike | None = None, bulk: bool = False, wait_unreadable: bool = False,
           **keywords) -> Submission:
    """Enqueue spectra for the given pipelines.

    Parameters
    ----------
    items : iterable
        File paths (absolute, relative to the current folder or to the data root) — each
        expanded into its spectra — or `SpectrumRef` / dicts naming one spectrum (sent
        to every pipeline named; a worker flags one its pipeline cannot take).
    pipelines : str or sequence, optional
        ``"bossnet"``, ``"astronn_dist"``, several (``"bossnet,astronn_dist"``) or
        ``"all"``. None (as ``specq enqueue`` without ``--pipeline``): every pipeline that
        takes the spectrum, as its file's listing tells.
    chunk_size : int, optional
        References per message (default ``settings.chunk_size_for(pipeline)``: 32 for
        BossNet, 128 for AstroNN distances).
    options : dict, optional
        ``draws``, ``seed`` passed to the workers.
    progress : callable, optional
        Called with 1 after each item is expanded (a progress bar's ``update``).
    release, product, table, **keywords
        Spectra named the SDSS way (:mod:`tasks.sdss_names`): ``release="dr19",
        product="specLite", run2d="v6_1_3", fieldid=101077, mjd=59846,
        catalogid=27021597000000001``, or a target ``table`` (CSV, FITS, Parquet) with
        one spectrum per row. Sent to those of ``pipelines`` that read the product.
        With a URL data root, file names in ``items`` are sent as given (relative to the
        root), without being read here.
    bulk : bool
        Send into the bulk lane (a reprocessing): served only while no new spectrum
        waits in the ordinary lane (see :mod:`tasks.lanes`).
    wait_unreadable : bool
        A file that cannot be opened now is not sent but listed in ``unreadable`` (for
        a caller that looks again later); by default it is sent, and its row says why.

    Returns
    -------
    Submission
        Task ids and references by pipeline, and files skipped with the reason.

    Raises
    ------
    InputError
        Some path names nothing a worker may read (see :func:`locate`); every reason
        is in the message and nothing was sent.
    tasks.sdss_names.SdssNameError
        An SDSS name that names no file (unknown release or product, a keyword missing).
    """
    celery_app = celery_app or get_app(settings)
    settings = settings or celery_app.specq_settings
    names = registry.parse(pipelines)
    if release or product or table is not None or keywords:
        named, names, notes = sdss_plan(names, release, product, table, keywords)
        items = [*items, *named]
        if pipelines is None:  # every pipeline that reads the product: no note for the others
            notes = []
    else:
        notes = []
    chunks = {p: min(int(chunk_size or settings.chunk_size_for(p)), settings.max_message_refs) for p in names}
    if min(chunks.values(), default=1) < 1:
        raise ValueError("chunk_size must be at least 1")
    result = Submission(refs={p: [] for p in names})
    refs_given: list[SpectrumRef] = []
    inputs: list[Input] = []
    refused: list[str] = []
    for item in items:
        ref = _coerce_ref(item)
        if ref is None and is_url(settings.data_root):  # nothing to look at here: the workers read it
            try:
                ref = SpectrumRef(os.fspath(item))
            except RefError as exc:
                refused.append(f"{item}: {exc}")
                continue
        if ref is not None:
            refs_given.append(ref)
            continue
        try:
            inputs += locate(item, settings.data_root, confined=True)
        except InputError as exc:
            refused.append(str(exc))
    if refused:  # nothing is sent: the caller fixes the list and sends it again
        raise InputError("; ".join(refused))
    inputs, result.skipped = unique_inputs(inputs)
    result.skipped += notes
    for inp in inputs:
        expanded = expand_input(inp, names, backend=settings.fits_backend, wait_unreadable=wait_unreadable)
        result.skipped += expanded.notes
        if not expanded.readable:
            result.unreadable.append(inp.name)
        for p, refs in expanded.refs.items():
            result.refs[p].extend(refs)
        if progress:
            progress(1)
    for p, refs in (_route(refs_given, names, settings) if pipelines is None else
                    {p: refs_given for p in names}).items():
        result.refs[p].extend(refs)
    for p, refs in result.refs.items():
        result.refs[p], dropped = unique_refs(refs)
        result.skipped += [f"{key}: given again: one row" for key in dropped]
    for p, refs in result.refs.items():
        ids = result.task_ids.setdefault(p, [])
        chunk = chunks[p]
        for i in range(0, len(refs), chunk):
            payload = [r.to_json() for r in refs[i:i + chunk]]
            ids.append(send_message(p, payload, options, settings=settings, celery_app=celery_app, bulk=bulk))
    for note in result.skipped:
        log.info("note: %s", note)
    return result


def sdss_plan(pipelines: Sequence[str], release: str | None, product: str | None, table, keywords: Mapping):
    """References for spectra named the SDSS way, the pipelines that read them, and notes.

    Raises
    ------
    tasks.sdss_names.SdssNameError
        A release without a product or the other way round, and what
        :func:`tasks.sdss_names.named_refs` refuses.
    """
    from tasks.sdss_names import SdssNameError, named_refs, pipelines_for

    if not release or not product:
        missing = "--release (e.g. dr19)" if not release else "--product (e.g. specLite)"
        raise SdssNameError(f"a spectrum named the SDSS way needs {missing}")
    if table is None and not keywords:
        raise SdssNameError(f"name the {product} spectra by keywords (name=value) or by --table FILE")
    kept, notes = pipelines_for(product, pipelines)
    return named_refs(release, product, keywords, table), kept, notes


def named_plan(pipelines: Sequence[str], release: str | None = None, product: str | None = None, table=None,
               **keywords) -> tuple[dict[str, list[SpectrumRef]], list[str]]:
    """``specq run``'s references for spectra named the SDSS way: by pipeline (only those that
    read the product; file-level, listed by the engine), and notes for the user."""
    refs, kept, notes = sdss_plan(pipelines, release, product, table, keywords)
    return {p: list(refs) for p in kept}, notes


def _route(refs: Sequence[SpectrumRef], names: Sequence[str], settings: Settings) -> dict[str, list[SpectrumRef]]:
    """Each reference to the pipelines whose listing of its file holds it; to the first
    pipeline when none does (a worker then records why, as a row)."""
    out: dict[str, list[SpectrumRef]] = {p: [] for p in names}
    listed: dict[str, dict[str, set]] = {}  # file → pipeline → its (hdu, row) there
    if is_url(settings.data_root):  # nothing to list here: the product its name tells decides
        from tasks.sdss_names import pipelines_for_file

        for ref in refs:
            for p in pipelines_for_file(ref.path, names) or names[:1]:
                out[p].append(ref)
        return out
    for ref in refs:
        if ref.path not in listed:
            try:
                file = ref.resolve(settings.data_root)  # confined: nothing outside the root is read
            except RefError:
                expanded = Expanded({}, [])
            else:
                expanded = expand_input(Input(ref.path, file, True), names, backend=settings.fits_backend)
            listed[ref.path] = {p: {(r.hdu, r.row) for r in found} for p, found in expanded.refs.items()}
        # A whole-file reference goes wherever the file's listing sent anything, its own
        # whole-file reference (a file that cannot be listed now) included.
        takers = [p for p, slots in listed[ref.path].items()
                  if (ref.hdu, ref.row) in slots or (ref.hdu is None and slots)]
        for p in takers or names[:1]:
            out[p].append(ref)
    return out


def unique_refs(refs: Sequence[SpectrumRef]) -> tuple[list[SpectrumRef], list[str]]:
    """``refs`` without repeats of a spectrum key (the first wins), and the keys dropped."""
    seen: set[str] = set()
    kept, dropped = [], []
    for ref in refs:
        if ref.key in seen:
            dropped.append(ref.key)
        else:
            seen.add(ref.key)
            kept.append(ref)
    return kept, dropped


def plan_local(files: Sequence[str | os.PathLike], pipelines: Sequence[str], data_root: str | os.PathLike,
               backend: str | None = None) -> tuple[dict[str, list[SpectrumRef]], list[str]]:
    """The references a local run (``specq run``, :func:`specq.predict`) processes, and notes.

    Each reference's ``path`` is the file's path relative to the data root when it is
    under it, otherwise the path exactly as given: it does not depend on the other inputs.
    A folder is searched for spectrum files; a file named twice is read once. ``backend``:
    the FITS backend the files are listed with (``Settings.fits_backend``).

    Returns
    -------
    refs : dict
        ``{pipeline: [SpectrumRef, ...]}`` for every pipeline given (maybe empty lists).
    notes : list of str
        What the user should know (a file given twice, a file without such spectra).

    Raises
    ------
    InputError
        Some inputs cannot be read at all (missing, a FIFO or device, an empty folder):
        every reason, one per line.
    """
    inputs, refused = [], []
    for f in files:
        try:
            inputs += locate(f, data_root, confined=False)
        except InputError as exc:
            refused.append(str(exc))
    if refused:
        raise InputError("\n".join(refused))
    inputs, notes = unique_inputs(inputs)
    refs: dict[str, list[SpectrumRef]] = {p: [] for p in pipelines}
    for inp in inputs:
        expanded = expand_input(inp, pipelines, local=True, backend=backend)
        notes += expanded.notes
        for p, r in expanded.refs.items():
            refs[p].extend(r)
    for p in pipelines:
        refs[p], dropped = unique_refs(refs[p])
        notes += [f"{key}: given again: one row" for key in dropped]
    return refs, notes


def read_list(path: str | os.PathLike) -> list[str]:
    """File names from a list file: one per line; blank lines and ``#`` comments ignored."""
    lines = Path(path).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
