"""``specq reconcile`` and ``specq status --unfinished``: the ledger of what was sent, for its user.

The work is in :mod:`tasks.reconcile`; here are the command's words: a duration as a
user writes it, and one line for what cannot be done.
"""
from __future__ import annotations

import argparse
import re
import sys

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` → seconds (an argparse type)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 600, 90s, 15m, 2h, 1d)")
    from workers.settings import MAX_SECONDS

    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than ten years")
    return seconds


def _store(settings):
    """The result store that holds the ledger, or None after one line on stderr."""
    import sqlalchemy as sa

    from specq.checks import demo_store_hint, missing_sqlite_store
    from workers.store_check import redact_url as _redact
    from workers.store import ResultStore

    missing = missing_sqlite_store(settings.database)
    if missing:  # a mistyped path: an empty store made here would say that nothing is unfinished
        print(f"specq: error: no result database at {missing} (SPECQ_DATABASE_URL){demo_store_hint(settings)}",
              file=sys.stderr)
        return None
    try:
        store = ResultStore(settings.database)
        store.create()
        return store
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.ArgumentError) as exc:
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"specq: error: cannot open the result database {_redact(settings.database)}: {text}",
              file=sys.stderr)
        return None


def main_reconcile(args) -> int:
    """``specq reconcile [--older-than DURATION] [--dry-run] [--bulk]``."""
    from tasks.app import app, broker_errors
    from tasks.reconcile import reconcile

    settings = app.specq_settings
    store = _store(settings)
    if store is None:
        return 2
    try:
        done = reconcile(store, settings, args.older_than, dry_run=args.dry_run, bulk=args.bulk)
    except broker_errors() as exc:
        from tasks.brokers import describe_error

        print(f"specq: error: {describe_error(exc, settings)}; nothing more was sent", file=sys.stderr)
        return 2
    print("\n".join(done.lines()))
    if args.dry_run and done.found:
        print("\n".join(f"  {u.pipeline} {u.spectrum_key} (sent {u.age_s():.0f} s ago)" for u in done.found))
    return 0


def main_unfinished(settings) -> int:
    """``specq status --unfinished``: every reference sent and not finished, oldest first."""
    from tasks.reconcile import unfinished_lines

    store = _store(settings)
    if store is None:
        return 2
    print("\n".join(unfinished_lines(store)))
    return 0
