"""``specq demo``: synthetic spectra through the embedded queue and a real worker, no server needed."""
from __future__ import annotations

from specq.cli import checks
from specq.cli.parser import at_least_one


def add_parsers(sub, pipelines: dict) -> None:
    p = sub.add_parser("demo", help="synthetic spectra → embedded queue → worker → results, no server needed")
    p.add_argument("--spectra", type=at_least_one, default=12,
                   help="number of BOSS spectra (APOGEE: a third)")
    p.add_argument("--pipeline", help=f"one of {', '.join(pipelines)}, several comma-separated, or all "
                                      f"(default: all registered)")
    p.add_argument("--keep", action="store_true",
                   help="keep everything the demo wrote (synthetic files, broker messages, worker log) for "
                        "inspection; without it only the results stay")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from specq.demo import run_demo

    pipelines, _ = checks.chosen_pipelines(args.pipeline)
    return run_demo(n_boss=args.spectra, n_apogee=max(1, args.spectra // 3), keep=args.keep, pipelines=pipelines)
