"""CPU milliseconds per spectrum of listing and reading, per input format.

The feed bench's "list" and "read" stages (``specq bench --feed``) timed in CPU time of
this process (``time.process_time``) instead of wall time: on a machine shared with other
work, wall time mostly measures the wait for a core, CPU time what the readers cost. Each
stage is timed ``--repeat`` times over the same references and the fastest is kept. The
process keeps freed memory for reuse, as a worker's reader processes do
(:func:`workers.memory.keep_freed_memory`).

Usage (from the repository root)::

    SPECQ_PLUGINS=workers.null.spec PYTHONPATH=$PWD python scripts/reader_cpu_time.py \
        --spectra 256 --repeat 7 --work /tmp/reader-cpu-time
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

FORMATS = ("mwmVisit", "mwmStar", "spec-lite", "apStar")


def fastest_ms(call, repeat: int, count: int) -> float:
    """CPU milliseconds per item of the fastest of ``repeat`` calls over ``count`` items."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        call()
        best = min(best, time.process_time() - start)
    return 1000 * best / count


def measure(fmt: str, spectra: int, repeat: int, work: Path) -> tuple[float, float]:
    """(list, read) CPU ms per spectrum of one format, on synthetic files made once under ``work``."""
    from specq.testing.synthetic import make_dataset
    from tasks.producer import expand_file
    from workers import engine

    instrument = "apogee" if fmt == "apStar" else "boss"
    pipeline = f"null_{instrument}"
    root = work / fmt
    listing = root / "files.txt"
    if not listing.exists():
        truth = make_dataset(root, n_boss=spectra if instrument == "boss" else 0,
                             n_apogee=spectra if instrument == "apogee" else 0, seed=1, formats=[fmt])
        listing.write_text("\n".join(sorted({str(path) for path in truth["path"]})))
    files = listing.read_text().split("\n")

    def refs() -> list:
        return [ref for name in files for ref in expand_file(name, [pipeline], root)[0].get(pipeline, [])]

    found = refs()
    list_ms = fastest_ms(refs, repeat, len(found))
    read_ms = fastest_ms(lambda: [job for ref in found for job in engine.read_jobs(ref, root, instrument)],
                         repeat, len(found))
    return list_ms, read_ms


def main() -> None:
    from workers.memory import keep_freed_memory

    keep_freed_memory()  # as in a worker's reader processes
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spectra", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path("/tmp/reader-cpu-time"))
    parser.add_argument("--formats", nargs="*", default=list(FORMATS))
    args = parser.parse_args()
    rows = {fmt: measure(fmt, args.spectra, args.repeat, args.work) for fmt in args.formats}
    print(f"CPU ms/spectrum, best of {args.repeat}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':>8}" + "".join(f"{fmt:>11}" for fmt in rows))
    for stage, column in (("list", 0), ("read", 1)):
        print(f"{stage:>8}" + "".join(f"{values[column]:>11.3f}" for values in rows.values()))


if __name__ == "__main__":
    main()
