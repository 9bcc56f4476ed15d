"""What the user gave, checked at the command line's boundary: a :class:`UsageError` for each mistake.

A mistake the user can fix (an option, a path, a service not running) is one line and exit
status 2, caught once, in :func:`specq.cli.main`.
"""
from __future__ import annotations

from pathlib import Path

from specq.checks import one_line  # noqa: F401 - the commands' one-line errors take it from here


class UsageError(Exception):
    """A mistake the user can fix (an option, a path, a service not running): one line, exit 2.

    Raised by the commands at their boundaries, from the known exception types of what
    the user gave; caught once, in :func:`specq.cli.main`.
    """


def unreachable_errors() -> tuple[type[BaseException], ...]:
    """What a broker or database that is not there raises (light imports only)."""
    import sqlalchemy.exc

    from tasks.app import broker_errors

    return broker_errors() + (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


def named(value: str | None, option: str) -> str | None:
    """``value`` of a path option, refused when empty: ``''`` (an unset shell variable, ``"$FILES"``)
    is the current folder to the path functions, which would read, send or watch all of it."""
    if value is not None and not value:
        raise UsageError(f"{option}: an empty name ('') names no file or folder (the current folder is '.')")
    return value


def read_list(path: str) -> list[str]:
    """``--from-list FILE``: its file names, or a UsageError naming the file."""
    from tasks.producer import read_list as read

    named(path, "--from-list")
    try:
        return read(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--from-list {path}: {getattr(exc, 'strerror', None) or one_line(exc)}") from None


def input_files(args) -> list[str]:
    """The spectrum files named on the command line, then those of ``--from-list``."""
    for name in args.files:
        named(name, "spectrum files")
    return list(args.files) + (read_list(args.from_list) if args.from_list is not None else [])


def sdss_names(args) -> dict | None:
    """``--release``, ``--product``, ``--table`` and name=value keywords (None when not given)."""
    from tasks.sdss_names import SdssNameError, cli_names

    try:
        return cli_names(args.release, args.product, args.table, args.files)
    except SdssNameError as exc:
        raise UsageError(str(exc)) from None


def chosen_pipelines(text: str | None) -> tuple[list[str], bool]:
    """The pipelines a command runs (None or "all": every registered one), and whether they were named."""
    from workers import registry

    try:
        return registry.parse(text), text not in (None, "all")
    except ValueError as exc:
        raise UsageError(f"--pipeline {text}: {exc}") from None


def check_message_options(options: dict, pipelines: list[str], named: bool = True) -> dict:
    """``--draws``/``--seed`` as every pipeline of ``pipelines`` takes them, before anything is sent
    or run: a worker replaces an option its pipeline refuses by the default and only logs it, so
    ``--draws 0`` for AstroNN (at least 1) would quietly run its 100. ``named``: the user named the
    pipelines (else they are every registered one, and ``--pipeline`` is the way out)."""
    from workers.pipeline import message_options

    try:
        message_options(pipelines, **options)
    except (TypeError, ValueError) as exc:
        given = " ".join(f"--{key} {value}" for key, value in options.items())
        hint = "" if named else " (give --pipeline to name the pipelines that take it)"
        raise UsageError(f"{given}: {exc}{hint}") from None
    return options


def check_output(path: Path, gzip: bool = False) -> None:
    """An output format specq writes, checked before any work (else UsageError)."""
    from workers.export import output_format

    try:
        output_format(path, gzip)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


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
    from workers.export import check_output_path

    paths = {p: Path(output.replace("{pipeline}", p)) for p in pipelines}
    for path in paths.values():
        try:
            check_output_path(path)
        except ValueError as exc:
            raise ValueError(f"specq {command}: {exc}") from None
    return paths


def open_store(settings):
    """The result store, checked to exist and answer: a wrong URL or database name is a UsageError."""
    import sqlalchemy as sa

    from specq.checks import demo_store_hint, missing_sqlite_store
    from workers.store_check import redact_url
    from workers.store import ResultStore

    url = settings.database
    where = redact_url(url)
    sqlite_file = missing_sqlite_store(url)
    if sqlite_file:
        raise UsageError(f"no result database at {sqlite_file} (SPECQ_DATABASE_URL){demo_store_hint(settings)}")
    try:
        store = ResultStore(url)
        with store.engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except sa.exc.ArgumentError as exc:
        raise UsageError(f"SPECQ_DATABASE_URL {where}: {one_line(exc)}") from None
    except unreachable_errors() as exc:
        raise UsageError(f"cannot open the result database {where}: {one_line(exc)}") from None
    return store


def check_weights(pipelines, settings) -> int:
    """The weights check before work starts: 0, or 2 after one line saying what is wrong and what to do."""
    from workers.engine import weights_candidates
    from workers.weights.verify import main_check

    return main_check(pipelines, settings, {p: weights_candidates(p) for p in pipelines})


def settings(**overrides):
    """The settings, with the command line's values over the environment's."""
    from workers.settings import load_settings

    return load_settings(**overrides)


def progress_bar(**kwargs):
    """A progress bar on stderr (none unless it is a terminal)."""
    from specq.progress import progress_bar as bar

    return bar(**kwargs)
