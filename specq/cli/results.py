"""The result store's commands: ``specq results export``, ``plot`` and ``summary``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specq.checks import demo_store_hint, try_writing_in
from specq.cli import checks
from specq.cli.parser import at_least_one


# Which store a results command reads, for its --help.
STORE = "The result store read: SPECQ_DATABASE_URL (unset: results.sqlite in SPECQ_STATE_DIR)."


def add_parsers(sub, pipelines: dict) -> None:
    p = sub.add_parser("results", help="the result store", description=STORE)
    rs = p.add_subparsers(dest="results_command", required=True)
    e = rs.add_parser("export", help="write results to FITS (the SDSS summary-file layout), CSV or Parquet",
                      description=STORE)
    e.add_argument("--pipeline", choices=list(pipelines),
                   help="default: every pipeline with rows (then -o must contain {pipeline})")
    e.add_argument("--all-columns", action="store_true",
                   help="add the provenance: spectrum_key, code_version, task_id, worker, created, t_elapsed")
    e.add_argument("--output", "-o", required=True,
                   help="FILE.fits, FILE.fits.gz, FILE.csv or FILE.parquet; {pipeline} in the name is replaced")
    e.add_argument("--gzip", action="store_true", help="write FITS gzipped (FILE.fits.gz)")
    _add_filters(e)
    e.set_defaults(func=cmd_export)
    e = rs.add_parser("plot", help="PNG diagrams, each pipeline's own (those its spec declares)",
                      description=STORE + " --input reads an exported file instead.")
    e.add_argument("--pipeline", choices=list(pipelines), help="default: every pipeline with rows")
    e.add_argument("--input", "-i", help="an exported file (FITS, CSV, Parquet) instead of the store")
    e.add_argument("--output-dir", "-o", default=".", help="folder for the PNG files (default: here)")
    e.add_argument("--show-bad", action="store_true", help="also draw rows with flag_bad (hidden by default)")
    _add_filters(e)
    e.set_defaults(func=cmd_plot)
    e = rs.add_parser("summary", help="rows per pipeline and model, flag counts, recent rows, common errors",
                      description=STORE)
    e.add_argument("--errors", type=at_least_one, default=5, help="how many of the most common errors to list")
    e.set_defaults(func=cmd_summary)


def _utc_time(text: str):
    """An ISO date or date-time as a UTC datetime (naive input is UTC): an option's type."""
    from specq.checks import utc_time

    try:
        return utc_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_prefix(text: str) -> str:
    """A sha256 or a prefix of one (or ``unloaded``), stripped and lower case: an option's type."""
    from specq.checks import model_prefix

    try:
        return model_prefix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def _check_period(args) -> None:
    """--until not after --since selects no row: a UsageError naming both, before any work."""
    from specq.checks import check_period

    try:
        check_period(args.since, args.until)
    except ValueError as exc:
        raise checks.UsageError(str(exc)) from None


def _filters(args) -> dict:
    """The row filters of ``specq results export/plot`` as ResultStore.rows arguments."""
    return {"since": args.since, "until": args.until, "model": args.model, "published_only": args.published_only,
            "bad": True if args.bad else False if args.good else None}


def _pipelines_with_rows(store, asked: str | None) -> list[str]:
    """``asked``, else every pipeline that has rows in the store."""
    if asked:
        return [asked]
    return [p for p in store.tables if store.count(p)]


def _holds_none(command: str, store, settings) -> int:
    """Say that the store holds no results, and where the demo's are; exit status 1."""
    print(f"specq results {command}: the store ({store.url}) holds no results{demo_store_hint(settings)}",
          file=sys.stderr)
    return 1


def cmd_export(args) -> int:
    from workers.export import export_results

    _check_period(args)
    checks.check_output(Path(args.output), args.gzip)
    settings = checks.settings()
    store = checks.open_store(settings)
    pipelines = _pipelines_with_rows(store, args.pipeline)
    if not pipelines:
        return _holds_none("export", store, settings)
    if args.pipeline and not store.count(args.pipeline):  # written all the same: a named file always comes out
        print(f"note: the store ({store.url}) holds no {args.pipeline} results{demo_store_hint(settings)}",
              file=sys.stderr)
    try:
        outputs = checks.output_paths(args.output, pipelines, "results export")
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    _check_export_paths(outputs.values(), args.gzip)  # before any rows are read
    total = sum(store.count(p) for p in pipelines)
    with checks.progress_bar(total=total, unit="row", desc="export") as bar:
        for p in pipelines:
            # Read and written a chunk at a time: a large store's rows are never all in memory.
            outputs[p], n, meta = export_results(store.schemas[p], store.chunks(p, **_filters(args)), outputs[p],
                                                 all_columns=args.all_columns, gzip=args.gzip, progress=bar.update)
            bar.write(f"{p}: {n} rows → {outputs[p]}" + (" [DEMO WEIGHTS]" if meta.get("DEMO") else ""),
                      file=sys.stdout)
    return 0


def cmd_plot(args) -> int:
    from specq.plots import plot_table
    from workers import registry

    _check_period(args)
    if checks.named(args.input, "--input") is not None:  # '' is no file, not "read the store"
        from specq.checks import read_input_table

        table = read_input_table(args.input)
        pipeline = args.pipeline or table.meta.get("specq_pipeline")
        if pipeline is None:
            from workers.export import pipelines_of_columns

            fitting = pipelines_of_columns(table.colnames)
            why = (f"its columns are those of {', '.join(fitting)} alike" if fitting
                   else "not a specq export (no PIPELINE card, no pipeline's columns)")
            print(f"specq results plot: {args.input}: {why}; give --pipeline", file=sys.stderr)
            return 2
        if pipeline not in registry.names():
            raise checks.UsageError(f"{args.input}: results of pipeline {pipeline!r}, which is not registered "
                                    f"here (SPECQ_PLUGINS?)")
        fields = [f.output_name for f in registry.get(pipeline).schema.fields]
        if not set(fields) & set(table.colnames):  # a spectrum file, a catalog, another pipeline's results
            raise checks.UsageError(f"--input {args.input}: none of {pipeline}'s columns ({', '.join(fields[:4])}…) "
                                    f"are in it")
        tables = {pipeline: table}
    else:
        settings = checks.settings()
        store = checks.open_store(settings)
        pipelines = _pipelines_with_rows(store, args.pipeline)
        if not pipelines:
            return _holds_none("plot", store, settings)
        tables = {p: store.table(p, **_filters(args)) for p in pipelines}
    # checked (and made) only where something will be drawn in it
    drawn = any(registry.get(p).plots for p in tables)
    folder = _plot_folder(args.output_dir) if drawn else Path(args.output_dir)
    for pipeline, table in tables.items():
        paths = plot_table(table, pipeline, folder, show_bad=args.show_bad)
        if not paths:
            print(f"note: {pipeline} declares no plots ({len(table)} rows not drawn)", file=sys.stderr)
        for path in paths:
            print(f"{pipeline}: {path}")
    return 0


def _check_export_paths(paths, gzip: bool) -> None:
    """Each export file can be written: its folder made where missing (as the export would),
    then checked to take it; a folder in its place, or no permission, is a UsageError."""
    from specq.checks import check_writable
    from workers.export import output_format

    written = [output_format(Path(path), gzip)[0] for path in paths]  # with --gzip: the .gz name
    for path in written:
        try:
            path.expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise checks.UsageError(f"--output {path}: cannot make its folder: {exc.strerror or exc}") from None
    check_writable(written)


def _plot_folder(name: str) -> Path:
    """``--output-dir``, made if missing, checked to take files (else a UsageError naming it)."""
    folder = Path(name).expanduser()
    try:
        if folder.exists() and not folder.is_dir():
            raise checks.UsageError(f"--output-dir {name}: a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        try_writing_in(folder)
    except OSError as exc:
        raise checks.UsageError(f"--output-dir {name}: cannot write there: {exc.strerror or exc}") from None
    return folder


def cmd_summary(args) -> int:
    from specq.summary import render_summary

    settings = checks.settings()
    store = checks.open_store(settings)
    summary = store.summary(top_errors=args.errors)
    print(render_summary(summary, store.schemas))
    hint = demo_store_hint(settings)
    if hint and not any(s["rows"] for s in summary.values()):
        print(f"note: this store holds no results{hint}", file=sys.stderr)
    return 0
