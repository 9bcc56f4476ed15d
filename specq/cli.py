"""``specq`` — a thin command line over the library.

Heavy imports (torch, astroNN) happen only inside the commands that need them, so
``specq enqueue`` and ``specq status`` start fast and stay light.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from specq.console import DEMO_BANNER, banner

DEMO_WEIGHTS_HELP = ("where no published weights are installed, use seeded random demo weights "
                     "(not for science; also SPECQ_DEMO_WEIGHTS=1)")


def _settings(**overrides):
    from workers.settings import load_settings

    return load_settings(**overrides)


class UsageError(Exception):
    """A mistake the user can fix (an option, a path, a service not running): one line, exit 2.

    Raised by the commands at their boundaries, from the known exception types of what
    the user gave; caught once, in :func:`main`.
    """


def _one_line(exc: BaseException) -> str:
    """The first line of an error's message (SQLAlchemy's: of the driver's own error)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """What a broker or database that is not there raises (light imports only)."""
    import sqlalchemy.exc

    from tasks.app import broker_errors

    return broker_errors() + (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


def _read_list(path: str) -> list[str]:
    """``--from-list FILE``: its file names, or a UsageError naming the file."""
    from tasks.producer import read_list

    try:
        return read_list(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--from-list {path}: {getattr(exc, 'strerror', None) or _one_line(exc)}") from None


def _pipelines(text: str | None) -> tuple[list[str], bool]:
    """The pipelines a command runs (None or "all": every registered one), and whether they were named."""
    from workers import registry

    try:
        return registry.parse(text), text not in (None, "all")
    except ValueError as exc:
        raise UsageError(f"--pipeline {text}: {exc}") from None


OUTPUT_SUFFIXES = (".csv", ".fits", ".fit", ".parquet")


def _check_output(path: Path) -> None:
    """An output format specq writes, checked before any work (else UsageError)."""
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"{path}: unknown output format {path.suffix or '(no extension)'!r}; "
                         "use .csv, .fits or .parquet")


def _open_store(settings):
    """The result store, checked to exist and answer: a wrong URL or database name is a UsageError."""
    import sqlalchemy as sa

    from specq.status import _redact
    from workers.store import ResultStore

    url = settings.database
    where = _redact(url)
    sqlite_file = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if sqlite_file and sqlite_file != ":memory:" and not Path(sqlite_file).expanduser().exists():
        raise UsageError(f"no result database at {sqlite_file} (SPECQ_DATABASE_URL)")
    try:
        store = ResultStore(url)
        with store.engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except sa.exc.ArgumentError as exc:
        raise UsageError(f"SPECQ_DATABASE_URL {where}: {_one_line(exc)}") from None
    except _unreachable_errors() as exc:
        raise UsageError(f"cannot open the result database {where}: {_one_line(exc)}") from None
    return store


def _progress_bar(**kwargs):
    from specq.progress import progress_bar

    return progress_bar(**kwargs)


# -- run ---------------------------------------------------------------------------
def run_plan(files: list[str], pipelines: list[str], data_root: Path, backend: str | None = None):
    """The references ``specq run`` processes, by pipeline, and notes for the user.

    Each row's ``path`` is the file's path relative to the data root when it is under
    it, otherwise the path exactly as given: it does not depend on the other inputs.
    A folder is searched for spectrum files; a file named twice is read once. ``backend``:
    the FITS backend the files are listed with (``Settings.fits_backend``).

    Raises
    ------
    tasks.producer.InputError
        Some inputs cannot be read at all (missing, a FIFO or device, an empty folder):
        every reason, one per line.
    """
    from tasks.producer import InputError, expand_input, locate, unique_inputs, unique_refs

    inputs, refused = [], []
    for f in files:
        try:
            inputs += locate(f, data_root, confined=False)
        except InputError as exc:
            refused.append(str(exc))
    if refused:
        raise InputError("\n".join(refused))
    inputs, notes = unique_inputs(inputs)
    refs: dict[str, list] = {p: [] for p in pipelines}
    for inp in inputs:
        expanded = expand_input(inp, pipelines, local=True, backend=backend)
        notes += expanded.notes
        for p, r in expanded.refs.items():
            refs[p].extend(r)
    for p in pipelines:
        refs[p], dropped = unique_refs(refs[p])
        notes += [f"{key}: given again: one row" for key in dropped]
    return refs, notes


def output_paths(output: str, pipelines: list[str], command: str) -> dict[str, Path]:
    """The output file of each pipeline: ``output`` itself for one, ``{pipeline}`` filled in for several.

    Raises
    ------
    ValueError
        Several pipelines and one file name without ``{pipeline}``: a summary file holds
        one pipeline's results, and a silently renamed output is an output not found.
    """
    if len(pipelines) > 1 and "{pipeline}" not in output:
        stem, suffix = Path(output).stem, Path(output).suffix
        raise ValueError(
            f"specq {command}: {', '.join(pipelines)} would all go to {output}, but one file holds one "
            f"pipeline's results: give --pipeline, or name the files with {{pipeline}}, "
            f"e.g. -o '{stem}-{{pipeline}}{suffix}'")
    paths = {p: Path(output.replace("{pipeline}", p)) for p in pipelines}
    for path in paths.values():
        if path.suffix.lower() not in (".csv", ".fits", ".fit", ".parquet"):
            raise ValueError(f"specq {command}: {path}: use .csv, .fits or .parquet")
    return paths


def _check_device(device: str, option: str = "--device") -> None:
    """A torch device this machine has: ``cpu``, ``cuda`` or ``cuda:N`` (else UsageError).

    ``option`` names where the device came from, for the message.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"{option} {device}: not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise UsageError(f"{option} {device}: this torch ({torch.__version__}) was built without CUDA")
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {device}: no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES?)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise UsageError(f"{option} {device}: specq runs on cpu or cuda")


def _check_run_inputs(args, settings, pipelines: list[str]) -> None:
    """The paths and device of ``specq run``, checked before any model is built."""
    if args.weights and not Path(args.weights).expanduser().exists():
        raise UsageError(f"--weights {args.weights}: no such file or folder")
    if settings.catalog is not None and (args.catalog or "astronn_dist" in pipelines) \
            and not Path(settings.catalog).expanduser().is_file():
        raise UsageError(f"--catalog {settings.catalog}: no such file")
    if settings.device:
        _check_device(settings.device, "--device" if args.device else "SPECQ_DEVICE")


def _load_for_run(engine, name: str, settings, args, options: dict):
    """The pipeline for ``specq run``: weights, catalog or options it refuses are the user's to fix."""
    from workers.weights import WeightsError

    try:
        return engine.get_pipeline(name, settings, weights=args.weights, draws=args.draws, seed=args.seed,
                                   batch_size=args.batch_size, **options)
    except (WeightsError, ValueError, OSError) as exc:  # the weights or catalog the user named
        raise UsageError(f"{name}: {_one_line(exc)}") from None


def _write_run_output(pipeline, rows: list[dict], out: Path):
    from workers.export import results_table, write_results

    table = results_table(pipeline.schema, rows)  # the columns of `specq results export`, error included
    write_results(table, out)
    return table


def _run_interrupted(pipeline, name: str, rows: list[dict], total: int, out: Path, not_run: list[str]) -> int:
    """Ctrl-C in ``specq run``: keep the rows already done, say how many; exit status 130."""
    skipped = f"; {', '.join(not_run)} not run" if not_run else ""
    if pipeline is not None and rows:
        _write_run_output(pipeline, rows, out)
        print(f"specq run: interrupted: wrote the {len(rows)} of {total} {name} spectra already done "
              f"to {out}{skipped}", file=sys.stderr)
    else:
        print(f"specq run: interrupted before any {name} spectrum was done: nothing written to {out}{skipped}",
              file=sys.stderr)
    return 130


def cmd_run(args) -> int:
    from tasks.producer import InputError
    from workers import engine, registry

    settings = _settings(device=args.device, catalog=args.catalog, demo_weights=args.demo_weights or None)
    files = list(args.files) + (_read_list(args.from_list) if args.from_list else [])
    if not files:
        raise UsageError("run: no input files (give spectrum files or --from-list FILE)")
    _check_output(Path(args.output))
    pipelines, named = _pipelines(args.pipeline)
    _check_run_inputs(args, settings, pipelines)
    root = Path(settings.data_root)
    try:
        refs, notes = run_plan(files, pipelines, root, settings.fits_backend)
    except InputError as exc:
        for line in str(exc).splitlines():
            print(f"specq run: {line}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not named:  # every registered pipeline: run those the files hold spectra for
        pipelines = [p for p in pipelines if refs[p]]
        if not pipelines:
            print("specq run: the files hold no spectrum for any pipeline", file=sys.stderr)
            return 2
    if args.weights and len(pipelines) > 1:
        print(f"specq run: --weights names one pipeline's weights, but {', '.join(pipelines)} would run: "
              f"give --pipeline", file=sys.stderr)
        return 2
    if args.weights is None and _check_weights(pipelines, settings):
        return 2
    try:
        outputs = output_paths(args.output, pipelines, "run")
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    from specq.checks import check_writable

    check_writable(outputs.values())  # before any work: a run is not lost to a folder it cannot write
    for i, p in enumerate(pipelines):
        options = {}
        if args.precision and args.precision in registry.get(p).precisions:
            options["precision"] = args.precision
        elif args.precision not in (None, "float32"):
            print(f"note: {p} runs in float32 (it offers no {args.precision} precision)", file=sys.stderr)
        pipeline, rows = None, []
        try:
            pipeline = _load_for_run(engine, p, settings, args, options)
            if pipeline.demo:
                banner(DEMO_BANNER)
            t0 = time.perf_counter()
            with _progress_bar(total=len(refs[p]), unit="spectrum", desc=p, disable=args.quiet) as bar:
                for batch in engine.iter_process(pipeline, refs[p], root, backend=settings.fits_backend,
                                                  last_attempt=True):  # nothing retries in-process
                    rows.extend(batch)
                    bar.update(len(batch))
            wall = time.perf_counter() - t0
        except KeyboardInterrupt:
            return _run_interrupted(pipeline, p, rows, len(refs[p]), outputs[p], pipelines[i + 1:])
        table = _write_run_output(pipeline, rows, outputs[p])
        bad = int(sum(table["flag_bad"])) if len(table) else 0
        print(f"{p}: {len(rows)} spectra in {wall:.1f} s ({len(rows) / wall if wall else 0:.2f} spectra/s), "
              f"{bad} flagged bad → {outputs[p]}" + (" [DEMO WEIGHTS]" if pipeline.demo else "")
              + _precision_note(rows))
    return 0


def _precision_note(rows) -> str:
    """`` [PRECISION bf16]`` when the rows were computed in a reduced precision, else ""."""
    reduced = sorted({r["precision"] for r in rows if r.get("precision")})
    return f" [PRECISION {', '.join(reduced)}]" if reduced else ""


def _check_weights(pipelines, settings) -> int:
    """The weights check before work starts: 0, or 2 after one line saying what is wrong and what to do."""
    from workers.engine import weights_candidates
    from workers.weights_manifest import main_check

    return main_check(pipelines, settings, {p: weights_candidates(p) for p in pipelines})


# -- queue side ---------------------------------------------------------------------
def cmd_worker(args) -> int:
    from tasks import app
    from tasks.app import worker_queues
    from workers import registry

    settings = app.specq_settings
    if getattr(args, "log_format", None):  # read by the worker's logging set-up (tasks.lifecycle)
        settings.log_format = args.log_format
    if args.demo_weights:
        os.environ["SPECQ_DEMO_WEIGHTS"] = "1"  # and for any process the worker starts
        settings.demo_weights = True
    queues = args.queues or ",".join(worker_queues(settings))
    wanted = {q.strip() for q in queues.split(",")}
    if _check_weights([p for p in registry.names() if settings.queue_for(p) in wanted], settings):
        return 2
    app.specq_weights_checked = True  # the worker_init check need not read the files again
    argv = ["worker", "-Q", queues, "-P", args.pool, "-l", args.loglevel]
    if args.hostname:
        argv += ["-n", args.hostname]
    if args.concurrency:
        argv += ["-c", str(args.concurrency)]
    app.worker_main(argv)
    return 0


def cmd_enqueue(args) -> int:
    import sqlalchemy.exc

    from specq.status import _redact
    from tasks.producer import submit

    files = list(args.files) + (_read_list(args.from_list) if args.from_list else [])
    if not files:
        raise UsageError("enqueue: give spectrum files or --from-list FILE")
    options = {k: v for k, v in (("draws", args.draws), ("seed", args.seed)) if v is not None}
    pipelines, _ = _pipelines(args.pipeline)
    settings = _settings()
    try:
        # Files are expanded (headers read) one by one: a bar for long lists.
        with _progress_bar(total=len(files), unit="file", desc="enqueue", disable=len(files) < 20) as bar:
            sub = submit(files, pipelines, chunk_size=args.chunk_size, options=options, progress=bar.update)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"enqueue: {exc}") from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:  # the ledger of what was sent
        raise UsageError(f"cannot open the result database {_redact(settings.database)}: {_one_line(exc)}") from None
    except _unreachable_errors() as exc:
        raise UsageError(f"cannot reach the broker {_redact(settings.broker)}: {_one_line(exc)} "
                         "(is it running? SPECQ_BROKER_URL)") from None
    for note in sub.skipped:
        print(f"note: {note}", file=sys.stderr)
    for p, ids in sub.task_ids.items():
        print(f"{p}: {len(sub.refs[p])} spectra in {len(ids)} messages")
    return 0


def _filters(args) -> dict:
    """The row filters of ``specq results export/plot`` as ResultStore.rows arguments."""
    return {"since": args.since, "until": args.until, "model": args.model, "published_only": args.published_only,
            "bad": True if args.bad else False if args.good else None}


def _pipelines_with_rows(store, asked: str | None) -> list[str]:
    """``asked``, else every pipeline that has rows in the store."""
    if asked:
        return [asked]
    return [p for p in store.tables if store.count(p)]


def cmd_export(args) -> int:
    from workers.export import write_results

    _check_output(Path(args.output))
    store = _open_store(_settings())
    pipelines = _pipelines_with_rows(store, args.pipeline)
    if not pipelines:
        print(f"specq results export: the store ({store.url}) holds no results", file=sys.stderr)
        return 1
    try:
        outputs = output_paths(args.output, pipelines, "results export")
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    total = sum(store.count(p) for p in pipelines)
    with _progress_bar(total=total, unit="row", desc="export") as bar:
        for p in pipelines:
            table = store.table(p, all_columns=args.all_columns, **_filters(args))
            write_results(table, outputs[p])
            bar.update(len(table))
            bar.write(f"{p}: {len(table)} rows → {outputs[p]}" + (" [DEMO WEIGHTS]" if table.meta.get("DEMO") else ""),
                      file=sys.stdout)
    return 0


def cmd_plot(args) -> int:
    from specq.plots import plot_table

    if args.input:
        from specq.checks import read_input_table

        table = read_input_table(args.input)
        pipeline = args.pipeline or table.meta.get("specq_pipeline")
        if pipeline is None:
            print(f"specq results plot: {args.input}: not a specq export (no PIPELINE card, "
                  f"no pipeline's columns); give --pipeline", file=sys.stderr)
            return 2
        tables = {pipeline: table}
    else:
        store = _open_store(_settings())
        pipelines = _pipelines_with_rows(store, args.pipeline)
        if not pipelines:
            print(f"specq results plot: the store ({store.url}) holds no results", file=sys.stderr)
            return 1
        tables = {p: store.table(p, **_filters(args)) for p in pipelines}
    for pipeline, table in tables.items():
        for path in plot_table(table, pipeline, Path(args.output_dir), show_bad=args.show_bad):
            print(f"{pipeline}: {path}")
    return 0


def cmd_summary(args) -> int:
    from specq.summary import render_summary

    store = _open_store(_settings())
    print(render_summary(store.summary(top_errors=args.errors), store.schemas))
    return 0


def _utc_time(text: str):
    """An ISO date or date-time as a UTC datetime (naive input is UTC)."""
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or time (e.g. 2025-03-14 or "
                                         f"2025-03-14T22:00)") from None
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment.astimezone(dt.timezone.utc)


def _model_prefix(text: str) -> str:
    value = text.strip().lower()
    if not value or not all(c in "0123456789abcdef" for c in value) and value != "unloaded":
        raise argparse.ArgumentTypeError(f"{text!r} is not a sha256 or a prefix of one (hex digits)")
    return value


def _add_filters(parser: argparse.ArgumentParser) -> None:
    """Row filters shared by `results export` and `results plot` (applied in the database)."""
    parser.add_argument("--since", type=_utc_time, help="rows written at or after this UTC date/time (ISO)")
    parser.add_argument("--until", type=_utc_time,
                        help="rows written before this UTC date/time (ISO); one night: "
                             "--since 2025-03-14T12:00 --until 2025-03-15T12:00")
    flags = parser.add_mutually_exclusive_group()
    flags.add_argument("--bad", action="store_true", help="only rows with flag_bad")
    flags.add_argument("--good", action="store_true", help="only rows without flag_bad")
    parser.add_argument("--model", type=_model_prefix, help="only rows of this model (sha256; a prefix is enough)")
    parser.add_argument("--published-only", action="store_true", help="leave out rows made with demo weights")


def cmd_watch(args) -> int:
    import signal
    import threading

    from tasks.watch import Watcher

    settings = _settings()
    options = {k: v for k, v in (("draws", args.draws), ("seed", args.seed)) if v is not None}
    # One line per file sent and a summary at the end, whatever the log level.
    logging.getLogger("specq.watch").setLevel(logging.INFO)
    try:
        pipelines, _ = _pipelines(args.pipeline)
        watcher = Watcher(args.folders, ",".join(pipelines), settings, poll_interval=args.poll_interval,
                          settle=args.settle, events=not args.poll_only, options=options,
                          incomplete_after=args.report_incomplete_after)
    except (NotADirectoryError, ValueError) as exc:
        raise UsageError(f"watch: {exc}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"watching {', '.join(map(str, watcher.folders))} for {', '.join(pipelines)} "
          f"(poll every {args.poll_interval} s; record: {watcher.record.path})", file=sys.stderr)
    try:
        watcher.run(stop, max_seconds=args.max_seconds)
    except KeyboardInterrupt:
        stop.set()
    return 0


def cmd_weights(args) -> int:
    from workers import registry
    from workers.engine import weights_candidates
    from workers.weights import WeightsError
    from workers.weights_manifest import install, render_survey, survey

    settings = _settings(weights_manifests=args.manifests)
    folder = settings.weights_cache
    if args.weights_command == "install":
        try:
            done = install(args.path, folder, pipeline=args.pipeline, manifests_dir=settings.weights_manifests,
                           allow_unpublished=args.allow_unpublished)
        except (WeightsError, OSError) as exc:
            print(f"specq weights install: {exc}", file=sys.stderr)
            return 1
        for old in done.replaced:
            print(f"replaced {old}")
        print(f"{done.pipeline}: installed {done.path} ({done.status}, sha256 {done.sha256})")
        return 0
    names = [args.pipeline] if args.pipeline else registry.names()
    try:
        entries = survey(settings, {p: weights_candidates(p) for p in names})
    except WeightsError as exc:
        print(f"specq weights {args.weights_command}: {exc}", file=sys.stderr)
        return 1
    print(render_survey(entries, folder))
    # A MISMATCH is a failure for `list` as for `verify`: scripts see it in the exit status.
    return 1 if any(e.inspection is not None and e.inspection.problems for e in entries) else 0


def cmd_status(args) -> int:
    from specq.status import collect, render

    if args.unfinished:
        from specq.reconcile import main_unfinished

        return main_unfinished(_settings())
    info = collect(_settings(), timeout=args.timeout)
    print(render(info))
    # Scripts and health checks read the status: a broker or database not answering is a failure.
    return 1 if any(key in info for key in ("queues_error", "workers_error", "store_error")) else 0


def cmd_demo(args) -> int:
    from specq.demo import run_demo

    return run_demo(n_boss=args.spectra, n_apogee=max(1, args.spectra // 3), keep=args.keep)


def cmd_dead_letters(args) -> int:
    from specq.dead_letters import list_lines, requeue

    store = _open_store(_settings())
    if args.dead_letters_command == "list":
        print("\n".join(list_lines(store)))
        return 0
    if not args.ids and not args.all:
        print("specq dead-letters requeue: give dead letter ids (see `specq dead-letters list`) or --all",
              file=sys.stderr)
        return 2
    from tasks import app

    lines, status = requeue(store, args.ids or None, force=args.force, settings=app.specq_settings)
    print("\n".join(lines), file=sys.stderr if status else sys.stdout)
    return status


def cmd_bench(args) -> int:
    from specq.bench import main_bench

    return main_bench(args)


def cmd_schema(args) -> int:
    from workers.registry import schemas
    from workers.schema import shared_markdown

    print(shared_markdown())
    for s in schemas().values():
        print(s.as_markdown())
    return 0


def _whole_number(minimum: int):
    """An argparse type: a whole number of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if minimum == 0 else f'at least {minimum}'}, "
                                             f"got {value}")
        return value

    return parse


_non_negative, _at_least_one = _whole_number(0), _whole_number(1)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value




def _duration(text: str) -> float:
    from specq.reconcile import duration

    return duration(text)


def _reconcile(args) -> int:
    from specq.reconcile import main_reconcile

    return main_reconcile(args)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, unless it has none or the text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or "%(default)" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """specq's parsers (subcommands included): defaults in help; ``-v`` and ``--log-format`` anywhere."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("conflict_handler", "resolve")  # a subcommand may define its own -v
        super().__init__(*args, **kwargs)
        # SUPPRESS: an option given before the subcommand is not reset by the subcommand's parser.
        self.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                          help="log at INFO level")
        self.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS,
                          help="log lines as text, or as JSON objects carrying the task id and the spectrum "
                               "(default: SPECQ_LOG_FORMAT, else text)")

    def error(self, message):
        """A bad command line in one line, without the usage block (exit status 2)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from workers import __version__, registry

    pipelines = registry.pipelines()
    names = ", ".join(pipelines)
    precisions = list(dict.fromkeys(p for spec in pipelines.values() for p in spec.precisions))
    pipelines_help = (f"one of {names}, several comma-separated, or all (default: all registered, "
                      f"{','.join(pipelines)}: each file's HDUs go to the pipeline of their instrument)")
    parser = Parser(prog="specq", description="SDSS stellar pipelines on a message queue.")
    parser.add_argument("--version", action="version", version=f"specq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="synthetic spectra → embedded queue → worker → results, no server needed")
    p.add_argument("--spectra", type=_at_least_one, default=12, help="number of BOSS spectra (APOGEE: a third)")
    p.add_argument("--keep", action="store_true",
                   help="keep everything the demo wrote (synthetic files, broker messages, worker log) for "
                        "inspection; without it only the results stay")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run a pipeline in this process, no broker")
    p.add_argument("--pipeline", help=pipelines_help + "; more than one → one output file each: put {pipeline} "
                   "in the --output name (-o 'out-{pipeline}.csv')")
    p.add_argument("--weights", help="weights to use: ten-chunk folder or .pt (default: those installed with "
                                     "`specq weights install`)")
    p.add_argument("--draws", type=_non_negative, help="MC draws (default: each pipeline's, "
                   + ", ".join(f"{n} {s.default_draws}" for n, s in pipelines.items()) + ")")
    p.add_argument("--seed", type=int, help="make the MC draws reproducible")
    p.add_argument("--catalog", help="source catalog for AstroNN photometry (CSV, FITS or Parquet)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--batch-size", type=_at_least_one, help="spectra per forward pass")
    p.add_argument("--precision", choices=precisions,
                   help="network forward: float32 (default, as published), tf32 (CUDA only) or bf16, "
                        "where the pipeline offers it; opt-in, rows record it (README: reduced precision)")
    p.add_argument("--demo-weights", action="store_true", help=DEMO_WEIGHTS_HELP)
    p.add_argument("--from-list", help="file with one spectrum path per line")
    p.add_argument("--quiet", action="store_true", help="no progress bar (there is none unless stderr is a terminal)")
    p.add_argument("--output", "-o", required=True, help="FILE.csv, FILE.fits or FILE.parquet")
    p.add_argument("files", nargs="*")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("worker", help="start a Celery worker (same as: celery -A tasks worker)")
    p.add_argument("--queues", "-Q", help="queues to consume, comma-separated (default: both pipelines' queues)")
    p.add_argument("--pool", "-P", default="solo", choices=("solo", "prefork", "threads"),
                   help="solo (default: one process, safe with CUDA), prefork, threads")
    p.add_argument("--concurrency", "-c", type=int, help="processes/threads for prefork/threads pools")
    p.add_argument("--loglevel", "-l", default="INFO", help="Celery's log level")
    p.add_argument("--hostname", "-n", help="node name (default celery@HOST); give each worker on a host its own")
    p.add_argument("--demo-weights", action="store_true", help=DEMO_WEIGHTS_HELP)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("weights", help="install, list and verify the published weights")
    p.add_argument("--manifests", help="folder of <pipeline>.toml manifests (default: the weights/ folder of specq)")
    ws = p.add_subparsers(dest="weights_command", required=True)
    w = ws.add_parser("list", help="what is installed in SPECQ_WEIGHTS_DIR: published, unverified or demo, sha256")
    w.add_argument("--pipeline", choices=list(pipelines))
    w.set_defaults(func=cmd_weights)
    w = ws.add_parser("install", help="check weights against their manifest and copy them into SPECQ_WEIGHTS_DIR")
    w.add_argument("path", help="a ten-chunk folder, a .pt, or a clone of the published repository")
    w.add_argument("--pipeline", choices=list(pipelines), help="default: recognised from the files")
    w.add_argument("--allow-unpublished", action="store_true",
                   help="install complete weights that are not the published ones (your own), as unverified")
    w.set_defaults(func=cmd_weights)
    w = ws.add_parser("verify", help="read the installed weights again and check them; exit 1 on a mismatch")
    w.add_argument("--pipeline", choices=list(pipelines))
    w.set_defaults(func=cmd_weights)

    p = sub.add_parser("enqueue", help="send spectrum files to the queue")
    p.add_argument("--pipeline", help=pipelines_help)
    p.add_argument("--from-list", help="file with one spectrum path per line")
    p.add_argument("--chunk-size", type=_at_least_one,
                   help="references per message (default: SPECQ_CHUNK_SIZE, else each pipeline's: "
                        + ", ".join(f"{n} {s.chunk_size}" for n, s in pipelines.items()) + ")")
    p.add_argument("--draws", type=_non_negative, help="MC draws (default: each pipeline's, "
                   + ", ".join(f"{n} {s.default_draws}" for n, s in pipelines.items()) + ")")
    p.add_argument("--seed", type=int, help="make the MC draws reproducible (default: random)")
    p.add_argument("files", nargs="*")
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("results", help="the result store")
    rs = p.add_subparsers(dest="results_command", required=True)
    e = rs.add_parser("export", help="write results to FITS (the SDSS summary-file layout), CSV or Parquet")
    e.add_argument("--pipeline", choices=list(pipelines),
                   help="default: every pipeline with rows (then -o must contain {pipeline})")
    e.add_argument("--all-columns", action="store_true",
                   help="add the provenance: spectrum_key, code_version, task_id, worker, created, t_elapsed")
    e.add_argument("--output", "-o", required=True,
                   help="FILE.fits, FILE.csv or FILE.parquet; {pipeline} in the name is replaced")
    _add_filters(e)
    e.set_defaults(func=cmd_export)
    e = rs.add_parser("plot", help="PNG diagrams: Kiel diagram, [Fe/H] and v_r histograms, distances")
    e.add_argument("--pipeline", choices=list(pipelines), help="default: every pipeline with rows")
    e.add_argument("--input", "-i", help="an exported file (FITS, CSV, Parquet) instead of the store")
    e.add_argument("--output-dir", "-o", default=".", help="folder for the PNG files (default: here)")
    e.add_argument("--show-bad", action="store_true", help="also draw rows with flag_bad (hidden by default)")
    _add_filters(e)
    e.set_defaults(func=cmd_plot)
    e = rs.add_parser("summary", help="rows per pipeline and model, flag counts, recent rows, common errors")
    e.add_argument("--errors", type=_at_least_one, default=5, help="how many of the most common errors to list")
    e.set_defaults(func=cmd_summary)

    p = sub.add_parser("watch", help="enqueue new spectrum files as they land (each file once)")
    p.add_argument("folders", nargs="+", help="folders under the data root, watched recursively")
    p.add_argument("--pipeline", help=pipelines_help)
    p.add_argument("--poll-interval", type=_positive_seconds, default=2.0, help="seconds between scans (NFS fallback)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds a file must stay unchanged to be complete")
    p.add_argument("--poll-only", action="store_true", help="no inotify events (e.g. on network file systems)")
    p.add_argument("--report-incomplete-after", type=_positive_seconds, default=900.0, metavar="SECONDS",
                   help="a file still not whole after this long is reported (log and specq status)")
    p.add_argument("--max-seconds", type=float, help="stop after this long (default: run until stopped)")
    p.add_argument("--draws", type=_non_negative, help="MC draws (default: each pipeline's, "
                   + ", ".join(f"{n} {s.default_draws}" for n, s in pipelines.items()) + ")")
    p.add_argument("--seed", type=int, help="make the MC draws reproducible (default: random)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("status", help="queue depths, workers, results, dead letters")
    p.add_argument("--timeout", type=_positive_seconds, default=1.0, help="seconds to wait for workers to answer")
    p.add_argument("--unfinished", action="store_true",
                   help="list every reference sent and not finished (no row yet), oldest first")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("reconcile", help="send again what was sent and never finished (lost by the broker)")
    p.add_argument("--older-than", type=_duration, metavar="DURATION",
                   help="only references sent longer ago than this: 600, 90s, 15m, 2h "
                        "(default: SPECQ_VISIBILITY_TIMEOUT)")
    p.add_argument("--dry-run", action="store_true", help="list what would be sent, send nothing")
    p.set_defaults(func=_reconcile)

    p = sub.add_parser("bench", help="spectra/s: the straightforward way vs the engine vs the queue")
    p.add_argument("--pipeline", default="bossnet", help=f"one of {names}, several comma-separated, or all")
    p.add_argument("--spectra", type=int, default=64, help="synthetic spectra to process")
    p.add_argument("--baseline-spectra", type=int, help="spectra for the (slow) baseline (default: all)")
    p.add_argument("--draws", type=int, help="MC draws (default: the pipeline's, 20 / 100)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--weights", help="weights to use (default: those installed, else demo weights)")
    p.add_argument("--batch-size", type=int, help="spectra per forward pass")
    p.add_argument("--conv", choices=["fft", "direct", "auto"], help="BossNet convolution implementation")
    p.add_argument("--precision", choices=precisions,
                   help="network forward: float32 (default), tf32 (CUDA only) or bf16, where the pipeline "
                        "offers it; not float32 → also prints the deviation from float32")
    p.add_argument("--no-queue", action="store_true", help="skip the end-to-end queue measurement")
    p.add_argument("--broker", help="broker for the queue run (default: redis://127.0.0.1:6379/11 if up, else "
                                   "embedded). The bench FLUSHES this Redis database before it runs; it refuses "
                                   "one that holds keys the bench did not write, unless --force")
    p.add_argument("--force", action="store_true",
                   help="flush the bench's Redis database even if it holds keys the bench did not write")
    p.add_argument("--workers", type=int, default=1, help="worker processes for the queue run")
    p.add_argument("--repeat", type=_at_least_one, default=1,
                   help="time baseline and engine this many times each, in turns, then the queue in as "
                        "many rounds, and keep the best of each: steadier ratios on a noisy machine "
                        "(not used by --latency)")
    p.add_argument("--latency", action="store_true",
                   help="instead: streaming latency of `specq watch` (file lands → row), p50/p99")
    p.add_argument("--rate", type=float, default=2.0, help="--latency: files landing per second")
    p.add_argument("--json", help="also write the results as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("schema", help="print every pipeline's result schema (columns, units, flags)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("dead-letters", help="messages the workers gave up on: list them, send them again")
    ds = p.add_subparsers(dest="dead_letters_command", required=True)
    d = ds.add_parser("list", help="every dead letter: id, pipeline, references, deliveries, reason")
    d.set_defaults(func=cmd_dead_letters)
    d = ds.add_parser("requeue", help="send a dead letter's references again as one new message (default "
                                      "options) and mark it requeued; its results replace the flagged rows")
    d.add_argument("ids", nargs="*", type=int, help="dead letter ids (see `specq dead-letters list`)")
    d.add_argument("--all", action="store_true", help="every dead letter not requeued yet")
    d.add_argument("--force", action="store_true", help="also send dead letters already requeued once")
    d.set_defaults(func=cmd_dead_letters)
    return parser


def main(argv: list[str] | None = None) -> int:
    from workers import logs
    from specq.checks import UserMistake
    from workers.settings import SettingsError

    args = build_parser().parse_args(argv)
    try:
        args.log_format = logs.check_format(getattr(args, "log_format", None) or os.environ.get("SPECQ_LOG_FORMAT"))
    except ValueError as exc:
        print(f"specq: SPECQ_LOG_FORMAT: {exc}", file=sys.stderr)
        return 2
    logs.configure(logging.INFO if getattr(args, "verbose", False) else logging.WARNING, args.log_format)
    try:
        return int(args.func(args) or 0)
    except (UsageError, SettingsError, UserMistake) as exc:
        print(f"specq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
