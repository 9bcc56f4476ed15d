"""``specq run``: the pipelines in this process, no broker, one output file each."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from specq.checks import check_device
from specq.cli import checks
from specq.cli.checks import UsageError
from specq.cli.parser import (DEMO_WEIGHTS_HELP, add_pipeline_options, add_sdss_names, at_least_one, draws_count,
                              draws_help, given_options, pipeline_options, pipelines_help, precisions)
from specq.console import DEMO_BANNER, banner, precision_options


def add_parsers(sub, pipelines: dict) -> None:
    p = sub.add_parser("run", help="run a pipeline in this process, no broker")
    p.add_argument("--pipeline", help=pipelines_help(pipelines)
                   + "; more than one → one output file each: put {pipeline} "
                   "in the --output name (-o 'out-{pipeline}.csv')")
    p.add_argument("--weights", help="weights to use: ten-chunk folder or .pt (default: those installed with "
                                     "`specq weights install`)")
    p.add_argument("--draws", type=draws_count, help=draws_help(pipelines))
    p.add_argument("--seed", type=int, help="make the MC draws reproducible")
    add_pipeline_options(p, pipelines, "run")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--batch-size", type=at_least_one, help="spectra per forward pass")
    p.add_argument("--precision", choices=precisions(pipelines),
                   help="network forward: float32 (default, as published), tf32 (CUDA only) or bf16, "
                        "where the pipeline offers it; opt-in, rows record it (README: reduced precision)")
    p.add_argument("--demo-weights", action="store_true", help=DEMO_WEIGHTS_HELP)
    p.add_argument("--from-list", help="file with one spectrum path per line")
    p.add_argument("--quiet", action="store_true", help="no progress bar (there is none unless stderr is a terminal)")
    p.add_argument("--output", "-o", required=True, help="FILE.csv, FILE.fits, FILE.fits.gz or FILE.parquet")
    p.add_argument("--gzip", action="store_true", help="write FITS gzipped (FILE.fits.gz)")
    add_sdss_names(p)
    p.set_defaults(func=cmd_run)


def run_plan(files: list[str], pipelines: list[str], data_root: Path, backend: str | None = None):
    """The references ``specq run`` processes, by pipeline, and notes (:func:`tasks.producer.plan_local`)."""
    from tasks.producer import plan_local

    return plan_local(files, pipelines, data_root, backend)


def _check_run_inputs(args, settings, pipelines: list[str]) -> None:
    """The paths and device of ``specq run``, checked before any model is built.

    A pipeline's file option is checked when given, and its setting when that pipeline may run.
    """
    from workers import registry

    checks.named(args.weights, "--weights")  # '' would quietly mean the installed (or demo) weights
    if args.weights and not Path(args.weights).expanduser().exists():
        raise UsageError(f"--weights {args.weights}: no such file or folder")
    given = given_options(args, registry.pipelines(), "run")
    files = [(o.flag, value) for o, value in given if o.is_file]
    flags = {o.flag for o, _ in given}
    # not given: the setting of the same name (SPECQ_CATALOG, or the config file's key), named as such
    files += [(settings.named(o.keyword), getattr(settings, o.keyword, None))
              for p in pipelines for o in registry.get(p).options_for("run")
              if o.is_file and o.setting and o.flag not in flags]
    for name, value in files:
        if value is not None and not Path(value).expanduser().is_file():
            what = "a folder, not a file" if Path(value).expanduser().is_dir() else "no such file"
            raise UsageError(f"{name} {value}: {what}")
    if settings.device is not None:  # "" too: not a device
        check_device(settings.device, "--device" if args.device is not None else "SPECQ_DEVICE")


def _load_for_run(engine, name: str, settings, args, options: dict):
    """The pipeline for ``specq run``: weights, files or options it refuses are the user's to fix."""
    from workers.weights.formats import WeightsError

    try:
        return engine.get_pipeline(name, settings, weights=args.weights, draws=args.draws, seed=args.seed,
                                   batch_size=args.batch_size, **options)
    except (WeightsError, ValueError, OSError) as exc:  # the weights or files the user named
        raise UsageError(f"{name}: {checks.one_line(exc)}") from None


def _write_run_output(pipeline, rows: list[dict], out: Path, gzip: bool = False):
    from workers.export import results_table, write_results

    table = results_table(pipeline.schema, rows)  # the columns of `specq results export`, error included
    write_results(table, out, gzip=gzip)
    return table


def _run_interrupted(pipeline, name: str, rows: list[dict], total: int, out: Path, not_run: list[str],
                     gzip: bool = False) -> int:
    """Ctrl-C in ``specq run``: keep the rows already done, say how many; exit status 130.

    Also after the last batch, while the output is written: the file is written again whole.
    """
    skipped = f"; {', '.join(not_run)} not run" if not_run else ""
    if pipeline is not None and rows:
        _write_run_output(pipeline, rows, out, gzip)
        print(f"specq run: interrupted: wrote the {len(rows)} of {total} {name} spectra already done "
              f"to {out}{skipped}", file=sys.stderr)
    else:
        print(f"specq run: interrupted before any {name} spectrum was done: nothing written to {out}{skipped}",
              file=sys.stderr)
    return 130


def cmd_run(args) -> int:
    from tasks.producer import InputError, named_plan
    from workers import engine, registry, remote

    settings = checks.settings(device=args.device, demo_weights=args.demo_weights or None)
    sdss = checks.sdss_names(args)
    files = [] if sdss else checks.input_files(args)
    if not files and not sdss:
        raise UsageError("run: no input files (give spectrum files, --from-list FILE or --release/--product)")
    checks.check_output(Path(args.output), args.gzip)
    pipelines, named = checks.chosen_pipelines(args.pipeline)
    _check_run_inputs(args, settings, pipelines)
    root = remote.data_root(settings)
    try:
        if sdss:  # only the pipelines that read the product
            refs, notes = named_plan(pipelines, **sdss)
            pipelines, notes = list(refs), notes if named else []
        else:  # files named on the command line are local (under a URL root: named from here)
            refs, notes = run_plan(files, pipelines, root if isinstance(root, Path) else Path.cwd(),
                                   settings.fits_backend)
    except ValueError as exc:  # InputError, or an SDSS name that names nothing
        if not isinstance(exc, InputError):
            raise UsageError(f"run: {exc}") from None
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
    if args.weights is None and checks.check_weights(pipelines, settings):
        return 2
    try:
        outputs = checks.output_paths(args.output, pipelines, "run")
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    from specq.checks import check_not_inputs, check_writable

    from workers.export import output_format

    outputs = {p: output_format(out, args.gzip)[0] for p, out in outputs.items()}  # --gzip: the .gz name
    check_writable(outputs.values())  # before any work: a run is not lost to a folder it cannot write
    check_not_inputs(outputs.values(), {r.local_file for plan in refs.values() for r in plan if r.local_file})
    for i, p in enumerate(pipelines):
        options = {**precision_options(p, args.precision), **pipeline_options(args, registry.get(p), "run")}
        pipeline, rows = None, []
        try:
            pipeline = _load_for_run(engine, p, settings, args, options)
            if pipeline.demo:
                banner(DEMO_BANNER)
            t0 = time.perf_counter()
            with checks.progress_bar(total=len(refs[p]), unit="spectrum", desc=p, disable=args.quiet) as bar:
                for batch in engine.iter_process(pipeline, refs[p], root, backend=settings.fits_backend,
                                                 last_attempt=True,  # nothing retries in-process
                                                 **engine.reading(settings)):
                    rows.extend(batch)
                    bar.update(len(batch))
            wall = time.perf_counter() - t0
            table = _write_run_output(pipeline, rows, outputs[p], args.gzip)
        except KeyboardInterrupt:
            return _run_interrupted(pipeline, p, rows, len(refs[p]), outputs[p], pipelines[i + 1:], args.gzip)
        bad = int(sum(table["flag_bad"])) if len(table) else 0
        print(f"{p}: {len(rows)} spectra in {wall:.1f} s ({len(rows) / wall if wall else 0:.2f} spectra/s), "
              f"{bad} flagged bad → {outputs[p]}" + (" [DEMO WEIGHTS]" if pipeline.demo else "")
              + _precision_note(rows))
    return 0


def _precision_note(rows) -> str:
    """`` [PRECISION bf16]`` when the rows were computed in a reduced precision, else ""."""
    reduced = sorted({r["precision"] for r in rows if r.get("precision")})
    return f" [PRECISION {', '.join(reduced)}]" if reduced else ""
