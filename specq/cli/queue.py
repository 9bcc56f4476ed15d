"""The queue's commands: ``specq enqueue``, ``watch``, ``worker``, ``status`` and ``dead-letters``."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from specq.cli import checks
from specq.cli.checks import UsageError
from specq.cli.parser import DEMO_WEIGHTS_HELP, add_sdss_names, at_least_one, draws_count, draws_help, pipelines_help, \
    non_negative_seconds, positive_seconds


def add_parsers(sub, pipelines: dict) -> None:
    p = sub.add_parser("worker", help="start a Celery worker (same as: celery -A tasks worker)")
    p.add_argument("--queues", "-Q", type=_queue_names,
                   help="queues to consume, comma-separated (default: every pipeline's queue)")
    p.add_argument("--pool", "-P", choices=("solo", "prefork", "threads"),
                   help="solo (the default: one process, safe with CUDA; with --concurrency above 1: "
                        "prefork), prefork, threads")
    p.add_argument("--concurrency", "-c", type=at_least_one,
                   help="processes/threads for prefork/threads pools (above 1 without --pool: prefork)")
    p.add_argument("--loglevel", "-l", default="INFO", type=_log_level, metavar="LEVEL",
                   help="Celery's log level: DEBUG, INFO, WARNING, ERROR, CRITICAL or FATAL (any case; WARN is WARNING)")
    p.add_argument("--hostname", "-n", help="node name (default celery@HOST); give each worker on a host its own")
    p.add_argument("--lanes", choices=("ordinary,bulk", "ordinary", "bulk"), metavar="LANES",
                   help="lanes to serve: ordinary,bulk (the default: ordinary first), ordinary or bulk "
                        "(also SPECQ_LANES)")
    p.add_argument("--demo-weights", action="store_true", help=DEMO_WEIGHTS_HELP)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("enqueue", help="send spectrum files to the queue")
    p.add_argument("--pipeline", help=pipelines_help(pipelines))
    p.add_argument("--from-list", help="file with one spectrum path per line")
    p.add_argument("--chunk-size", type=at_least_one,
                   help="references per message (default: SPECQ_CHUNK_SIZE, else each pipeline's: "
                        + ", ".join(f"{n} {s.chunk_size}" for n, s in pipelines.items()) + ")")
    p.add_argument("--draws", type=draws_count, help=draws_help(pipelines))
    p.add_argument("--seed", type=int, help="make the MC draws reproducible (default: random)")
    p.add_argument("--bulk", action="store_true",
                   help="into the bulk lane (a reprocessing): served after new spectra")
    add_sdss_names(p)
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("watch", help="enqueue new spectrum files as they land (each file once)")
    p.add_argument("folders", nargs="+", help="folders under the data root, watched recursively")
    p.add_argument("--pipeline", help=pipelines_help(pipelines))
    p.add_argument("--poll-interval", type=positive_seconds, default=2.0, help="seconds between scans (NFS fallback)")
    p.add_argument("--settle", type=non_negative_seconds, default=2.0, help="seconds a file must stay unchanged to be complete")
    p.add_argument("--poll-only", action="store_true", help="no inotify events (e.g. on network file systems)")
    p.add_argument("--report-incomplete-after", type=positive_seconds, default=900.0, metavar="SECONDS",
                   help="a file still not whole after this long is reported (log and specq status)")
    p.add_argument("--max-seconds", type=positive_seconds, help="stop after this long (default: run until stopped)")
    p.add_argument("--draws", type=draws_count, help=draws_help(pipelines))
    p.add_argument("--seed", type=int, help="make the MC draws reproducible (default: random)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("status", help="queue depths, workers, results, dead letters",
                       description="Queue depths, workers, results and dead letters of the broker "
                                   "(SPECQ_BROKER_URL; unset: the embedded broker under SPECQ_STATE_DIR) and the "
                                   "result store (SPECQ_DATABASE_URL; unset: results.sqlite in SPECQ_STATE_DIR).")
    p.add_argument("--timeout", type=positive_seconds, default=1.0, help="seconds to wait for workers to answer")
    p.add_argument("--unfinished", action="store_true",
                   help="list every reference sent and not finished (no row yet), oldest first")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("reconcile", help="send again what was sent and never finished (lost by the broker)")
    p.add_argument("--older-than", type=_duration, metavar="DURATION",
                   help="only references sent longer ago than this: 600, 90s, 15m, 2h "
                        "(default: SPECQ_VISIBILITY_TIMEOUT)")
    p.add_argument("--dry-run", action="store_true", help="list what would be sent, send nothing")
    p.add_argument("--bulk", action="store_true",
                   help="into the bulk lane (what a reprocessing lost): served after new spectra")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("dead-letters", help="messages the workers gave up on: list them, send them again")
    ds = p.add_subparsers(dest="dead_letters_command", required=True)
    d = ds.add_parser("list", help="every dead letter: id, pipeline, references, deliveries, reason")
    d.set_defaults(func=cmd_dead_letters)
    d = ds.add_parser("requeue", help="send a dead letter's references again as one new message (default "
                                      "options) and mark it requeued; its results replace the flagged rows")
    d.add_argument("ids", nargs="*", type=_dead_letter_id, help="dead letter ids (see `specq dead-letters list`)")
    d.add_argument("--all", action="store_true", help="every dead letter not requeued yet")
    d.add_argument("--force", action="store_true", help="also send dead letters already requeued once")
    d.set_defaults(func=cmd_dead_letters)


def _message_options(args) -> dict:
    """The per-message options given (draws, seed)."""
    return {k: v for k, v in (("draws", args.draws), ("seed", args.seed)) if v is not None}


def worker_pool(pool: str | None, concurrency: int | None) -> str:
    """The pool ``specq worker`` runs: the one named, else prefork for a concurrency above 1
    (``--concurrency 4`` asks for four processes), else solo."""
    if pool:
        return pool
    return "prefork" if concurrency and concurrency > 1 else "solo"


def cmd_worker(args) -> int:
    from tasks import app
    from tasks.app import worker_queues
    from tasks.brokers import refused
    from tasks.lanes import served_queues, split
    from workers import registry

    settings = app.specq_settings
    if getattr(args, "log_format", None):  # read by the worker's logging set-up (tasks.lifecycle)
        settings.log_format = args.log_format
    if args.demo_weights:
        os.environ["SPECQ_DEMO_WEIGHTS"] = "1"  # and for any process the worker starts
        settings.demo_weights = True
    if args.lanes:  # read by the worker's lane set-up (tasks.lifecycle.serve_lanes)
        settings.lanes = os.environ["SPECQ_LANES"] = args.lanes
    routed = worker_queues(settings)
    queues = args.queues or ",".join(routed)
    wanted = {split(q.strip())[0] for q in queues.split(",")}
    unknown = sorted(wanted - set(routed))
    if unknown:  # a worker on a queue no pipeline is routed to would wait for ever
        raise UsageError(f"--queues: no pipeline is routed to {', '.join(unknown)} (the pipelines' queues: "
                         f"{', '.join(routed)}; SPECQ_<NAME>_QUEUE routes a pipeline elsewhere)")
    # Its queues declared as its consumer will: a refusal is one line here, not Celery's traceback.
    table = app.amqp.queues
    served = [table[name] for name in served_queues(queues.split(","), settings) if name in table]
    refusal = refused(settings, served)
    if refusal:
        raise UsageError(refusal)
    app.specq_broker_checked = True
    if checks.check_weights([p for p in registry.names() if settings.queue_for(p) in wanted], settings):
        return 2
    app.specq_weights_checked = True  # the worker_init check need not read the files again
    # Without gossip: specq's workers need no other worker's events, and a solo worker busy in a
    # long message would read them late and log clock drift and missed heartbeats.
    argv = ["worker", "-Q", queues, "-P", worker_pool(args.pool, args.concurrency), "-l", args.loglevel,
            "--without-gossip"]
    if args.hostname:
        argv += ["-n", args.hostname]
    if args.concurrency:
        argv += ["-c", str(args.concurrency)]
    from tasks.lifecycle import run_worker

    return run_worker(app, argv)


def _queue_names(text: str) -> str:
    """``--queues``: comma-separated queue names, the blanks around each dropped; a blank one is refused."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: a queue name is blank")
    return ",".join(names)


def _dead_letter_id(text: str) -> int:
    """A dead letter's id: a whole number the store can hold."""
    value = at_least_one(text)
    if value >= 2**63:
        raise argparse.ArgumentTypeError(f"no dead letter has the id {text}")
    return value


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL")


def _log_level(text: str) -> str:
    """``--loglevel``: one of Celery's level names, in upper case (``warn`` is taken as WARNING)."""
    level = {"WARN": "WARNING"}.get(text.strip().upper(), text.strip().upper())
    if level not in _LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level ({', '.join(_LOG_LEVELS)})")
    return level


def cmd_enqueue(args) -> int:
    import sqlalchemy.exc

    from tasks.brokers import describe_error, not_sent_note
    from tasks.producer import submit
    from workers.store_check import redact_url

    named = checks.sdss_names(args)
    files = [] if named else checks.input_files(args)
    if not files and not named:
        raise UsageError("enqueue: give spectrum files, --from-list FILE or --release/--product")
    pipelines, chosen = checks.chosen_pipelines(args.pipeline)
    checks.check_message_options(_message_options(args), pipelines, chosen)
    settings = checks.settings()
    try:
        # Files are expanded (headers read) one by one: a bar for long lists.
        with checks.progress_bar(total=len(files), unit="file", desc="enqueue", disable=len(files) < 20) as bar:
            sub = submit(files, pipelines if chosen else None, chunk_size=args.chunk_size,
                         options=_message_options(args), progress=bar.update, bulk=args.bulk,
                         **(named or {}))
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"enqueue: {exc}") from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:  # the ledger of what was sent
        raise UsageError(f"cannot open the result database {redact_url(settings.database)}: "
                         f"{checks.one_line(exc)}") from None
    except checks.unreachable_errors() as exc:
        raise UsageError(f"{describe_error(exc, settings)}; {not_sent_note('enqueue it')}") from None
    for note in sub.skipped:
        print(f"note: {note}", file=sys.stderr)
    sent = {p: ids for p, ids in sub.task_ids.items() if ids}
    for p, ids in sent.items():
        n = len(sub.refs[p])
        print(f"{p}: {n} {'spectrum' if n == 1 else 'spectra'} in {len(ids)} message{'' if len(ids) == 1 else 's'}")
    if not sent:
        print("nothing sent: no spectrum for " + ", ".join(sub.task_ids), file=sys.stderr)
    return 0


def cmd_watch(args) -> int:
    import threading

    from tasks.watch import Watcher, stop_on_signals

    for folder in args.folders:
        checks.named(folder, "watch")
    settings = checks.settings()
    # One line per file sent and a summary at the end, whatever the log level.
    logging.getLogger("specq.watch").setLevel(logging.INFO)
    try:
        pipelines, chosen = checks.chosen_pipelines(args.pipeline)
        checks.check_message_options(_message_options(args), pipelines, chosen)
        watcher = Watcher(args.folders, ",".join(pipelines), settings, poll_interval=args.poll_interval,
                          settle=args.settle, events=not args.poll_only, options=_message_options(args),
                          incomplete_after=args.report_incomplete_after)
    except (NotADirectoryError, ValueError) as exc:
        raise UsageError(f"watch: {exc}") from None
    from tasks.app import get_app
    from tasks.brokers import refused

    # a broker that refuses this user, vhost or a queue it sends to (declared here) would refuse every
    # file: say so once, as a worker does (one not reachable yet is waited for: the files stay on disk
    # and are sent once it answers)
    table = get_app(settings).amqp.queues
    sent_to = [table[name] for name in dict.fromkeys(settings.queue_for(p) for p in pipelines) if name in table]
    refusal = refused(settings, sent_to)
    if refusal:
        raise UsageError(f"watch: {refusal}")
    stop = threading.Event()
    stop_on_signals(stop)
    print(f"watching {', '.join(map(str, watcher.folders))} for {', '.join(pipelines)} "
          f"(poll every {args.poll_interval} s; record: {watcher.record.path})", file=sys.stderr)
    try:
        watcher.run(stop, max_seconds=args.max_seconds)
    except KeyboardInterrupt:
        stop.set()
    return 0


def _duration(text: str) -> float:
    from specq.reconcile import duration

    return duration(text)


def cmd_reconcile(args) -> int:
    from specq.reconcile import main_reconcile

    return main_reconcile(args)


def cmd_status(args) -> int:
    from specq.status import collect, render

    if args.unfinished:
        from specq.reconcile import main_unfinished

        return main_unfinished(checks.settings())

    info = collect(checks.settings(), timeout=args.timeout)
    print(render(info))
    # Scripts and health checks read the status: a broker or database not answering is a failure.
    return 1 if any(key in info for key in ("queues_error", "workers_error", "store_error")) else 0


def cmd_dead_letters(args) -> int:
    from specq.dead_letters import list_lines, requeue

    store = checks.open_store(checks.settings())
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
