"""``specq bench``: spectra/s, the straightforward way against the engine and the queue."""
from __future__ import annotations

import sys
from pathlib import Path

from specq.cli import checks
from specq.cli.parser import (add_pipeline_options, at_least_one, draws_count, pipeline_options, positive_rate,
                              precisions)


def add_parsers(sub, pipelines: dict) -> None:
    names = ", ".join(pipelines)
    first = next(iter(pipelines))
    p = sub.add_parser("bench", help="spectra/s: the straightforward way vs the engine vs the queue")
    p.add_argument("--pipeline", default=first, help=f"one of {names}, several comma-separated, or all")
    p.add_argument("--spectra", type=at_least_one, default=64, help="synthetic spectra to process")
    p.add_argument("--baseline-spectra", type=at_least_one, help="spectra for the (slow) baseline (default: all)")
    p.add_argument("--draws", type=draws_count, help="MC draws (default: the pipeline's, "
                   + " / ".join(str(s.default_draws) for s in pipelines.values()) + ")")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--weights", help="weights to use (default: those installed, else demo weights)")
    p.add_argument("--batch-size", type=at_least_one, help="spectra per forward pass")
    add_pipeline_options(p, pipelines, "bench")
    p.add_argument("--precision", choices=precisions(pipelines),
                   help="network forward: float32 (default), tf32 (CUDA only) or bf16, where the pipeline "
                        "offers it; not float32 → also prints the deviation from float32")
    p.add_argument("--no-queue", action="store_true", help="skip the end-to-end queue measurement")
    p.add_argument("--broker", help="broker for the queue run (default: redis://127.0.0.1:6379/11 if up, else "
                                   "embedded). The bench FLUSHES this Redis database before it runs; it refuses "
                                   "one that holds keys the bench did not write, unless --force")
    p.add_argument("--force", action="store_true",
                   help="flush the bench's Redis database even if it holds keys the bench did not write")
    p.add_argument("--workers", type=at_least_one, default=1, help="worker processes for the queue run")
    p.add_argument("--repeat", type=at_least_one, default=1,
                   help="time baseline and engine this many times each, in turns, then the queue in as "
                        "many rounds, and keep the best of each: steadier ratios on a noisy machine "
                        "(not used by --latency)")
    p.add_argument("--latency", action="store_true",
                   help="instead: streaming latency of `specq watch` (file lands → row), p50/p99")
    p.add_argument("--rate", type=positive_rate, default=2.0, help="--latency: files landing per second")
    p.add_argument("--backlog", type=at_least_one,
                   help="--latency: queue this many bulk spectra (a reprocessing) before the files land")
    p.add_argument("--remote", action="store_true",
                   help="spectra read per second from an HTTP data root on this host, cold and warm cache, "
                        "beside the local folder (reads only, no model)")
    p.add_argument("--feed", action="store_true",
                   help="instead: the host's feed rate with a null network, per input format and stage "
                        "(--broker embedded: the embedded broker even where Redis answers)")
    p.add_argument("--formats", help="--feed: input formats, comma-separated (default: all four)")
    p.add_argument("--readers", type=at_least_one, help="--feed: readers (default: the cores this process may use)")
    p.add_argument("--visits", type=at_least_one,
                   help="--feed: visits in each mwmVisit file (default: 2-3)")
    p.add_argument("--database", help="--feed: result store (default: PostgreSQL on 127.0.0.1 if up, else SQLite)")
    p.add_argument("--json", help="also write the results as JSON")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from specq import bench

    try:
        return _run_bench(bench, args)
    except bench.BenchRefused as exc:
        print(f"specq bench: {exc}", file=sys.stderr)
        return 2


def _run_bench(bench, args) -> int:
    if args.latency and args.backlog is not None:
        from specq.bench.latency_backlog import main_latency_backlog

        return main_latency_backlog(args)
    if args.feed:
        from specq.bench.feed import main_feed

        return main_feed(args)
    if args.remote:
        from specq.bench.remote import main_remote_bench

        return main_remote_bench(args)
    return _bench(bench, args)


def _bench(bench, args) -> int:
    from specq.console import precision_options
    from workers import registry

    pipelines, _ = checks.chosen_pipelines(args.pipeline)
    # --draws as each pipeline takes it (AstroNN needs at least one): refused before any work,
    # not by the pipeline once the bench is under way, with a traceback
    checks.check_message_options({"draws": args.draws} if args.draws is not None else {}, pipelines)
    force = bool(getattr(args, "force", False))
    if args.latency:
        for p in pipelines:
            res = bench.run_latency(p, n_files=args.spectra, rate=args.rate, draws=args.draws,
                                    broker_url=args.broker, force=force)
            print(f"specq bench --latency: {p}, {res['files']} files at {res['rate_per_s']} files/s via "
                  f"{res['broker']}: land → row p50 {res['p50_s']:.2f} s, p99 {res['p99_s']:.2f} s, "
                  f"max {res['max_s']:.2f} s")
        return 0
    results = []
    for p in pipelines:
        extra = {**pipeline_options(args, registry.get(p), "bench"), **precision_options(p, args.precision)}
        r = bench.run_bench(p, n_spectra=args.spectra, draws=args.draws, device=args.device, weights=args.weights,
                            baseline_spectra=args.baseline_spectra, queue=not args.no_queue,
                            broker_url=args.broker, batch_size=args.batch_size, queue_workers=args.workers,
                            repeat=args.repeat, force=force, **extra)
        print(bench.render(r), flush=True)
        results.append(r)
    if args.json:
        Path(args.json).write_text(bench.to_json(results))
    return 0
