"""The device check behind ``scripts/gpu-check.sh``: one JSON file of what a GPU does with specq.

On CUDA (the default) it measures, within about five minutes on one GPU:

* BossNet at float32, tf32 and bf16, 20 draws, 4,096 spectra (``specq bench``'s engine,
  no queue), with each precision's peak device memory;
* the bf16 (and tf32) deviation table: the same spectra and noise against float32;
* the feed bench (:mod:`specq.bench.feed`, in-process: reading, packing, rows, store) with
  the null model, per input format.

``--device cpu`` runs the same steps at small sizes: the script's own test. The JSON is
rewritten after every step, so a run cut short still leaves what it measured.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

SIZES = {"cuda": {"spectra": 4096, "draws": 20, "baseline": 64, "feed": 1024},
         "cpu": {"spectra": 6, "draws": 2, "baseline": 1, "feed": 8}}


def _peak_memory_mb(device: str, result) -> float:
    """The engine's peak device memory on CUDA (measured by the bench right after its engine
    pass, before a float32 reference runs); elsewhere the process's peak resident memory."""
    if device.startswith("cuda") and result.peak_device_mb_engine is not None:
        return result.peak_device_mb_engine
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _machine(device: str) -> dict:
    import platform

    import torch

    from specq.bench.report import cpu_model

    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_capability": str(torch.backends.cpu.get_cpu_capability()), "cpu": cpu_model(),
            "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def _missing_modules() -> list[str]:
    """The modules the steps import that this Python cannot find."""
    import importlib.util

    def found(name: str) -> bool:
        if name in sys.modules:  # imported already (find_spec refuses a module without a __spec__)
            return True
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    needed = ("torch", "numpy", "astropy", "celery", "kombu", "redis", "sqlalchemy", "pyarrow", "numba", "watchdog")
    return [name for name in needed if not found(name)]


def run(device: str, out: Path, work: Path) -> dict:
    """Every step, the JSON at ``out`` rewritten after each; returns the report."""
    from specq.bench import run_bench
    from specq.bench.feed import as_dicts, run_feed

    size = SIZES["cuda" if device.startswith("cuda") else "cpu"]
    report: dict = {"machine": _machine(device), "sizes": size, "bossnet": {}, "feed": None, "seconds": {}}

    def save() -> None:
        out.write_text(json.dumps(report, indent=2, default=str))

    save()
    for precision in ("float32", "tf32", "bf16"):
        t0 = time.perf_counter()
        result = run_bench("bossnet", n_spectra=size["spectra"], draws=size["draws"], device=device, queue=False,
                           baseline_spectra=size["baseline"], precision=precision, readers=False,
                           workdir=work / "bossnet")  # one data set for the three precisions
        report["bossnet"][precision] = {
            "engine_per_s": result.engine_per_s, "baseline_per_s": result.baseline_per_s,
            "float32_per_s": result.float32_per_s, "peak_memory_mb": _peak_memory_mb(device, result),
            "deviation_from_float32": result.precision_deviation,
            "result_flags_changed": result.precision_flags_changed, "spectra": result.spectra,
            "draws": result.draws, "demo_weights": result.demo_weights}
        report["seconds"][f"bossnet {precision}"] = round(time.perf_counter() - t0, 1)
        save()
    t0 = time.perf_counter()
    report["feed"] = as_dicts(run_feed(n_spectra=size["feed"], queue=False, repeat=1, workdir=work / "feed"))
    report["seconds"]["feed"] = round(time.perf_counter() - t0, 1)
    save()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (small sizes: the self-test)")
    parser.add_argument("--out", default="gpu-check.json", help="the JSON file to write")
    args = parser.parse_args(argv)
    missing = _missing_modules()
    if missing:  # before any device time goes into a run that would stop at its first step
        print(f"gpu-check: this Python lacks {', '.join(missing)}: install specq's dependencies, or run "
              f"scripts/gpu-wheels.sh where pip works and carry .whl/ (scripts/gpu-check.sh installs it)",
              file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu-check: no CUDA device here (use --device cpu for the self-test)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="specq-gpu-check-") as work:
        report = run(args.device, Path(args.out), Path(work))
    print(f"gpu-check: wrote {args.out} ({', '.join(f'{k} {v} s' for k, v in report['seconds'].items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
