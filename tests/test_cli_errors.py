"""Every user mistake: one clear line on stderr, no traceback, exit status 2.

Each case runs the real command line in a subprocess. ``specq status`` is not a usage
error: it prints its report and exits 1 when the broker or the database does not answer.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from proxy import free_port


def _specq(*args, cwd, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **{k: str(v) for k, v in env.items()}}
    return subprocess.run([sys.executable, "-m", "specq.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def _one_line_error(out: subprocess.CompletedProcess, *expected: str, prefix: str | None = None) -> str:
    """The one line of a refused command (``specq …: error: …``, or starting with ``prefix``)."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    form = lines[0].startswith(prefix) if prefix else lines[0].startswith("specq") and "error: " in lines[0]
    assert form and all(text in lines[0] for text in expected), lines[0]
    return lines[0]


@pytest.fixture
def spectrum(tmp_path):
    from specq.testing.synthetic import write_spec_lite

    path = tmp_path / "spec-a.fits"
    write_spec_lite(path, teff=5000, logg=4.0, fe_h=0.0, v_r=0.0, snr=30, seed=1)
    return path.name


def _cuda_mistake() -> tuple[str, str]:
    """A CUDA device this machine does not have, and the words of its error."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.device_count()}", "CUDA device(s)"
    return "cuda", "CUDA"


RUN_MISTAKES = {
    "unknown pipeline": (["--pipeline", "boss"], ["--pipeline boss", "unknown pipeline", "bossnet"]),
    "missing weights": (["--weights", "/nope"], ["--weights /nope: no such file"]),
    "missing catalog": (["--pipeline", "astronn_dist", "--catalog", "missing.csv"], ["--catalog missing.csv"]),
    "missing list": (["--from-list", "nolist.txt"], ["--from-list nolist.txt"]),
    "negative draws": (["--draws", "-3"], ["--draws", "0 or more"]),
    "draws not a number": (["--draws", "many"], ["--draws", "not a whole number"]),
    "batch size 0": (["--batch-size", "0"], ["--batch-size", "at least 1"]),
    "not a device": (["--device", "cudx"], ["--device cudx: not a device"]),
    "unknown output format": (["-o", "out.txt"], ["out.txt", "unknown output format"]),
}


@pytest.mark.parametrize("case", list(RUN_MISTAKES))
def test_specq_run_mistakes(tmp_path, spectrum, case):
    options, expected = RUN_MISTAKES[case]
    output = [] if "-o" in options else ["-o", "out.csv"]
    _one_line_error(_specq("run", *options, *output, spectrum, cwd=tmp_path), *expected)
    assert not (tmp_path / "out.csv").exists()


def test_specq_run_on_a_cuda_device_this_machine_lacks(tmp_path, spectrum):
    device, words = _cuda_mistake()
    _one_line_error(_specq("run", "--device", device, "-o", "out.csv", spectrum, cwd=tmp_path),
                    f"--device {device}", words)


def test_specq_run_device_from_the_environment(tmp_path, spectrum):
    _one_line_error(_specq("run", "-o", "out.csv", spectrum, cwd=tmp_path, SPECQ_DEVICE="gpu"), "SPECQ_DEVICE gpu")


def test_specq_run_missing_input_unreadable_weights_and_catalog(tmp_path, spectrum):
    _one_line_error(_specq("run", "-o", "out.csv", "missing.fits", cwd=tmp_path), "missing.fits: no such file",
                    prefix="specq run: ")
    (tmp_path / "broken.pt").write_bytes(b"not a torch file at all" * 10)
    _one_line_error(_specq("run", "--weights", "broken.pt", "-o", "out.csv", spectrum, cwd=tmp_path),
                    "bossnet: ", "broken.pt")
    from specq.testing.synthetic import write_apstar

    write_apstar(tmp_path / "apStar-a.fits", teff=4800, logg=2.5, fe_h=0.0, fakemag=300.0, snr=100, seed=2)
    (tmp_path / "broken.csv").write_bytes(bytes(range(256)) * 4)
    _one_line_error(_specq("run", "--pipeline", "astronn_dist", "--catalog", "broken.csv", "-o", "out.csv",
                           "apStar-a.fits", cwd=tmp_path), "broken.csv: not a catalog file")


def test_specq_enqueue_with_the_broker_down(tmp_path, spectrum):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    line = _one_line_error(_specq("enqueue", spectrum, cwd=tmp_path, SPECQ_BROKER_URL=url, SPECQ_DATA_ROOT=tmp_path),
                           "cannot reach the broker", url)
    assert "SPECQ_BROKER_URL" in line


def test_specq_enqueue_mistakes(tmp_path, spectrum):
    _one_line_error(_specq("enqueue", "missing.fits", cwd=tmp_path, SPECQ_DATA_ROOT=tmp_path), "missing.fits")
    _one_line_error(_specq("enqueue", "--chunk-size", "0", spectrum, cwd=tmp_path), "--chunk-size", "at least 1")
    _one_line_error(_specq("enqueue", "--pipeline", "boss", spectrum, cwd=tmp_path), "unknown pipeline")
    _one_line_error(_specq("enqueue", "--from-list", "nolist.txt", cwd=tmp_path), "--from-list nolist.txt")


def test_results_export_from_a_database_that_does_not_exist(tmp_path, postgres_url):
    wrong = postgres_url.rsplit("/", 1)[0] + "/no_such_specq_db"
    _one_line_error(_specq("results", "export", "-o", "x.csv", cwd=tmp_path, SPECQ_DATABASE_URL=wrong),
                    "cannot open the result database", "no_such_specq_db")
    missing = tmp_path / "nowhere" / "r.sqlite"
    _one_line_error(_specq("results", "export", "-o", "x.csv", cwd=tmp_path, SPECQ_DATABASE_URL=f"sqlite:///{missing}"),
                    f"no result database at {missing}")
    assert not missing.parent.exists()  # looking did not create it
    _one_line_error(_specq("results", "export", "-o", "x.csv", cwd=tmp_path, SPECQ_DATABASE_URL="nosuch://db"),
                    "SPECQ_DATABASE_URL nosuch://db")


def test_results_export_to_an_unknown_format(tmp_path):
    from workers.store import ResultStore

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    ResultStore(url).create()
    _one_line_error(_specq("results", "export", "-o", "z.txt", cwd=tmp_path, SPECQ_DATABASE_URL=url),
                    "unknown output format '.txt'")
    assert not list(tmp_path.glob("z*"))
    out = _specq("results", "export", "--pipeline", "bossnet", "-o", "z.csv", cwd=tmp_path, SPECQ_DATABASE_URL=url)
    assert out.returncode == 0 and (tmp_path / "z.csv").exists(), out.stderr[-2000:]


def test_watch_a_folder_that_does_not_exist(tmp_path):
    _one_line_error(_specq("watch", "nowhere", "--max-seconds", "1", cwd=tmp_path, SPECQ_DATA_ROOT=tmp_path),
                    "nowhere")


def test_status_exits_non_zero_when_the_broker_or_the_database_does_not_answer(tmp_path, redis_url, postgres_url):
    down = f"redis://127.0.0.1:{free_port()}/0"
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    broker_down = _specq("status", cwd=tmp_path, SPECQ_BROKER_URL=down, SPECQ_DATABASE_URL=url)
    assert broker_down.returncode == 1 and "queues error" in broker_down.stdout, broker_down.stdout
    wrong_db = postgres_url.rsplit("/", 1)[0] + "/no_such_specq_db"
    db_down = _specq("status", cwd=tmp_path, SPECQ_BROKER_URL=redis_url, SPECQ_DATABASE_URL=wrong_db)
    assert db_down.returncode == 1 and "store error" in db_down.stdout, db_down.stdout
    healthy = _specq("status", cwd=tmp_path, SPECQ_BROKER_URL=redis_url, SPECQ_DATABASE_URL=url)
    assert healthy.returncode == 0 and "error" not in healthy.stdout, healthy.stdout
