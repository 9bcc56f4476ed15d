"""``specq`` — a thin command line over the library, one module per command group.

:mod:`~specq.cli.run` (``run``), :mod:`~specq.cli.queue` (``worker``, ``enqueue``, ``watch``,
``status``, ``dead-letters``), :mod:`~specq.cli.weights`, :mod:`~specq.cli.results`
(``export``, ``plot``, ``summary``), :mod:`~specq.cli.bench`, :mod:`~specq.cli.demo` and
:mod:`~specq.cli.schema` each add their own subcommands to :func:`build_parser`; the
options a pipeline declares on its spec come from :mod:`~specq.cli.parser`.

Heavy imports (torch, the networks) happen only inside the commands that need them, so
``specq enqueue`` and ``specq status`` start fast and stay light.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from specq.cli import bench, demo, queue, results, run, schema, weights
from specq.cli.checks import UsageError, output_paths
from specq.cli.parser import Parser
from specq.cli.run import run_plan

# In the order ``specq --help`` lists them.
COMMAND_GROUPS = (demo, run, queue, weights, results, bench, schema)

__all__ = ["COMMAND_GROUPS", "UsageError", "build_parser", "main", "output_paths", "run_plan"]


def build_parser() -> argparse.ArgumentParser:
    """specq's parser: each command group adds its subcommands, with choices read from the registry."""
    from workers import __version__, registry

    pipelines = registry.pipelines()
    parser = Parser(prog="specq", description="SDSS stellar pipelines on a message queue.")
    parser.add_argument("--version", action="version", version=f"specq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub, pipelines)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``specq`` command; its exit status.

    A reader that stops early (``specq schema | head -1``) ends the command quietly, with
    status 141 (128 + SIGPIPE), as other Unix tools do.
    """
    try:
        code = _run(argv)
        sys.stdout.flush()  # here, where a closed pipe can be caught, not at the interpreter's exit
        return code
    except BrokenPipeError:
        if not _reader_gone():  # a pipe to a broker or a child process: a failure to report
            raise
        # The interpreter flushes stdout once more as it exits: point it at devnull, so that
        # flush finds nothing to write to the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (the poll of its end says error)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll here, or a stdout with no file (captured)
        return False


def _run(argv: list[str] | None) -> int:
    from workers import logs

    from workers.registry import PluginError

    try:  # the parser lists the pipelines: a plugin that cannot load stops here, in one line
        args = build_parser().parse_args(argv)
    except PluginError as exc:
        print(f"specq: error: {exc}", file=sys.stderr)
        return 2
    try:
        args.log_format = logs.check_format(getattr(args, "log_format", None) or os.environ.get("SPECQ_LOG_FORMAT"))
    except ValueError as exc:
        print(f"specq: SPECQ_LOG_FORMAT: {exc}", file=sys.stderr)
        return 2
    logs.configure(logging.INFO if getattr(args, "verbose", False) else logging.WARNING, args.log_format)
    from specq.checks import UserMistake
    from workers.settings import SettingsError

    try:
        return int(args.func(args) or 0)
    except (UsageError, SettingsError, UserMistake, PluginError) as exc:
        print(f"specq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specq: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - re-raised unless a broker or database said it
        # the bench points the environment at brokers and stores of its own: the user's settings would misname them
        line = None if args.command == "bench" else _service_error(exc)
        if line is None:
            raise
        print(f"specq: error: {line}", file=sys.stderr)
        return 2


def _service_error(exc: BaseException) -> str | None:
    """One line for a broker or result database that refused or failed a command, else None.

    The commands catch the failures they expect where they can say more; this is what is left
    (a database file that is not SQLite, a broker that went away in the middle).
    """
    import sqlalchemy.exc

    from specq.cli.checks import one_line, settings as current_settings, unreachable_errors
    from workers.settings import SettingsError
    from workers.store_check import redact_url

    # a store that cannot be used (not a database, gone, refused), not a statement specq got wrong
    database = type(exc) is sqlalchemy.exc.DatabaseError or isinstance(
        exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))
    # the broker's client libraries only: a ConnectionError of a remote data root is not the broker's
    broker = isinstance(exc, unreachable_errors()) and type(exc).__module__.partition(".")[0] in ("kombu", "redis",
                                                                                                  "amqp")
    if not (database or broker):
        return None
    try:
        settings = current_settings()
    except SettingsError as error:  # the command got this far with them: say both
        return f"{one_line(exc)}; {error}"
    if database:
        return f"the result database {redact_url(settings.database)}: {one_line(exc)} (SPECQ_DATABASE_URL)"
    from tasks.brokers import describe_error

    return describe_error(exc, settings)
