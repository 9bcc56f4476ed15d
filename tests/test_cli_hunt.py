"""Mistakes at the command line, in the settings and in the Python API that used to be taken
for something else: an empty path read as the current folder, settings outside their range
(a NaN read timeout that never fires), argument types the writer did not check.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT


def _specq_side_by_side(commands: list[list[str]], cwd, **env) -> list[subprocess.CompletedProcess]:
    """``specq`` commands started at once (each mostly waits on its imports): their outcomes, in order."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **{k: str(v) for k, v in env.items()}}
    procs = [subprocess.Popen([sys.executable, "-m", "specq.cli", *map(str, command)], cwd=cwd, env=full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for command in commands]
    done = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(f"{proc.args} did not end: {stderr[-2000:]}")
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return done


def _one_line_error(out: subprocess.CompletedProcess, *expected: str) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.args, out.stdout[-2000:], out.stderr[-3000:])
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert lines[0].startswith("specq") and all(text in lines[0] for text in expected), lines[0]
    return lines[0]


SPEC0 = "spec-100000-60494-63050395001000000.fits"


@pytest.fixture
def folder_of_spectra(tmp_path):
    """A current folder (and data root) holding spectra: what an empty path would pick up."""
    from specq.testing.synthetic import write_spec_lite

    for i in range(2):
        write_spec_lite(tmp_path / f"spec-10000{i}-60494-6305039500100000{i}.fits", teff=5000 + 100 * i, logg=4.0,
                        fe_h=0.0, v_r=0.0, snr=30, seed=i)
    return tmp_path


# -- an empty path is no path ------------------------------------------------------------
def test_an_empty_path_on_the_command_line_is_refused_not_read_as_the_current_folder(folder_of_spectra):
    """``specq run -o out.csv "$FILES"`` with FILES unset ran every spectrum of the current folder;
    ``specq enqueue ""`` sent every spectrum of the data root; ``specq watch ""`` watched it."""
    run, run_list, enqueue, watch, weights, plot = _specq_side_by_side(
        [["run", "--pipeline", "bossnet", "-o", "out.csv", ""],
         ["run", "--pipeline", "bossnet", "-o", "out.csv", "--from-list", ""],
         ["enqueue", "--pipeline", "bossnet", SPEC0, ""],
         ["watch", "", "--max-seconds", "30", "--poll-only"],
         ["run", "--pipeline", "bossnet", "--weights", "", "-o", "out.csv", SPEC0],
         ["results", "plot", "--input", ""]],
        folder_of_spectra, SPECQ_DATA_ROOT=folder_of_spectra)
    _one_line_error(run, "an empty name ('')")
    _one_line_error(run_list, "--from-list", "an empty name ('')")
    _one_line_error(enqueue, "an empty name ('')")
    _one_line_error(watch, "watch", "an empty name ('')")
    _one_line_error(weights, "--weights", "an empty name ('')")
    _one_line_error(plot, "--input", "an empty name ('')")
    assert not (folder_of_spectra / "out.csv").exists()
    assert "DEMO" not in run.stderr + weights.stderr, "refused before any model was loaded"


def test_predict_and_submit_refuse_an_empty_path(folder_of_spectra, monkeypatch):
    import specq

    monkeypatch.chdir(folder_of_spectra)
    monkeypatch.setenv("SPECQ_DATA_ROOT", str(folder_of_spectra))
    for given in ("", [""], [SPEC0, ""]):
        with pytest.raises(specq.SpecqError, match=r"an empty path \(''\)"):
            specq.predict(given, "bossnet", demo_weights=True)
        with pytest.raises(specq.SpecqError, match=r"an empty path \(''\)"):
            specq.submit(given, "bossnet")
    with pytest.raises(specq.SpecqError, match="weights=''"):
        specq.predict(SPEC0, "bossnet", weights="")


def test_enqueue_and_watch_refuse_draws_a_pipeline_refuses_before_sending(folder_of_spectra):
    """``specq enqueue --draws 0 --pipeline astronn_dist`` was sent, and the worker ran AstroNN's
    default 100 draws instead, saying so only in its log (``specq.submit`` refuses it)."""
    from specq.testing.synthetic import write_apstar

    star = "apStar-1.0-apo25m-2M00000001+0000001.fits"
    write_apstar(folder_of_spectra / star, teff=4800, logg=2.5, fe_h=0.0, fakemag=100.0, snr=80, seed=3,
                 apogee_id="2M00000001+0000001", k_mag=9.0, ebv=0.05)
    astronn, every, watch, bossnet = _specq_side_by_side(
        [["enqueue", "--draws", "0", "--pipeline", "astronn_dist", star], ["enqueue", "--draws", "0", star],
         ["watch", ".", "--draws", "0", "--pipeline", "astronn_dist", "--max-seconds", "30", "--poll-only"],
         ["enqueue", "--draws", "0", "--pipeline", "bossnet", SPEC0]],
        folder_of_spectra, SPECQ_DATA_ROOT=folder_of_spectra)
    _one_line_error(astronn, "--draws 0", "astronn_dist needs at least 1 draws")
    _one_line_error(every, "--draws 0", "astronn_dist needs at least 1 draws", "give --pipeline")
    _one_line_error(watch, "--draws 0", "astronn_dist needs at least 1 draws")
    assert bossnet.returncode == 0 and "bossnet: 1 spectrum in 1 message" in bossnet.stdout, bossnet.stderr[-2000:]


# -- settings out of range ---------------------------------------------------------------------
OUT_OF_RANGE = [
    ("SPECQ_READ_TIMEOUT", "nan"), ("SPECQ_READ_TIMEOUT", "inf"), ("SPECQ_READ_TIMEOUT", "0"),
    ("SPECQ_READ_TIMEOUT", "-1"), ("SPECQ_REMOTE_TIMEOUT", "nan"), ("SPECQ_REMOTE_TIMEOUT", "-5"),
    ("SPECQ_CACHE_GB", "nan"), ("SPECQ_CACHE_GB", "inf"), ("SPECQ_CACHE_GB", "-1"), ("SPECQ_RANGE_READ_MB", "inf"),
    ("SPECQ_RANGE_READ_MB", "-1"), ("SPECQ_RETRY_BACKOFF", "nan"), ("SPECQ_RETRY_BACKOFF", "-2"),
    ("SPECQ_MAX_RETRIES", "-1"), ("SPECQ_MAX_REDELIVERIES", "-1"), ("SPECQ_METRICS_PORT", "0"),
    ("SPECQ_METRICS_PORT", "70000"), ("SPECQ_DEMO_WEIGHTS", "maybe"), ("SPECQ_DEMO_WEIGHTS", "ture"),
]


@pytest.mark.parametrize("variable,value", OUT_OF_RANGE)
def test_a_setting_out_of_its_range_is_refused_naming_it(monkeypatch, variable, value):
    from workers.settings import SettingsError, load_settings

    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable) as caught:
        load_settings()
    assert repr(value) in str(caught.value) or value in str(caught.value)


def test_settings_in_range_are_still_taken(monkeypatch):
    from workers.settings import load_settings

    for variable, value in {"SPECQ_READ_TIMEOUT": "0.5", "SPECQ_MAX_RETRIES": "0", "SPECQ_MAX_REDELIVERIES": "0",
                            "SPECQ_RETRY_BACKOFF": "0", "SPECQ_CACHE_GB": "0.5", "SPECQ_RANGE_READ_MB": "0",
                            "SPECQ_METRICS_PORT": "9808", "SPECQ_DEMO_WEIGHTS": " Off "}.items():
        monkeypatch.setenv(variable, value)
    s = load_settings()
    assert (s.read_timeout, s.max_retries, s.max_redeliveries, s.retry_backoff) == (0.5, 0, 0, 0.0)
    assert (s.cache_gb, s.range_read_mb, s.metrics_port, s.demo_weights) == (0.5, 0.0, 9808, False)
    monkeypatch.setenv("SPECQ_DEMO_WEIGHTS", "YES")
    assert load_settings().demo_weights is True


def test_a_config_file_value_out_of_range_names_the_file_and_key(tmp_path, monkeypatch):
    from workers.settings import SettingsError, load_settings

    (tmp_path / "specq.toml").write_text("[specq]\nread_timeout = nan\n")  # TOML has a NaN literal
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=r"specq\.toml: read_timeout must be a finite number"):
        load_settings()


def test_settings_out_of_range_stop_specq_run_in_one_line(folder_of_spectra):
    """SPECQ_CACHE_GB=nan (or a range size of inf) under a URL data root was a traceback from
    deep inside the cache; SPECQ_READ_TIMEOUT=nan turned the hung-reader guard off, so a reader
    that hangs hung the run for ever."""
    sdss = ["--release", "dr19", "--product", "specLite", "run2d=v6_1_3", "fieldid=101077", "mjd=59846",
            "catalogid=27021597000000001"]
    url_root = {"SPECQ_DATA_ROOT": "http://127.0.0.1:9/sas"}
    cache, = _specq_side_by_side([["run", "--demo-weights", "-o", "c.csv", *sdss]], folder_of_spectra,
                                 SPECQ_CACHE_GB="nan", **url_root)
    _one_line_error(cache, "SPECQ_CACHE_GB must be a finite number", "nan")
    ranges, = _specq_side_by_side([["run", "--demo-weights", "-o", "r.csv", *sdss]], folder_of_spectra,
                                  SPECQ_RANGE_READ_MB="inf", **url_root)
    _one_line_error(ranges, "SPECQ_RANGE_READ_MB must be a finite number", "inf")
    hang, = _specq_side_by_side([["run", "--demo-weights", "--pipeline", "bossnet", "-o", "h.csv", SPEC0]],
                                folder_of_spectra, SPECQ_READ_TIMEOUT="nan", SPECQ_READERS=2,
                                SPECQ_FAULT_HANG_READER="spec-100000")
    _one_line_error(hang, "SPECQ_READ_TIMEOUT must be a finite number", "nan")
    assert not list(folder_of_spectra.glob("*.csv"))


# -- write_results' arguments ---------------------------------------------------------------
def test_write_results_checks_its_arguments_before_writing(tmp_path):
    import specq
    from astropy.table import Table

    table = Table({"teff": [5000.0]})
    kept = tmp_path / "kept.csv"
    kept.write_text("before\n")
    with pytest.raises(specq.SpecqError, match="overwrite must be True or False, not 'no'"):
        specq.write_results(table, kept, overwrite="no")
    assert kept.read_text() == "before\n", "overwrite='no' must not replace the file"
    with pytest.raises(specq.SpecqError, match="gzip must be True or False"):
        specq.write_results(table, tmp_path / "g.fits", gzip="no")
    for wrong in (None, [1, 2], {"teff": [1.0]}):
        with pytest.raises(specq.SpecqError, match="give the astropy Table"):
            specq.write_results(wrong, tmp_path / "w.csv")
    with pytest.raises(specq.SpecqError, match="path=5"):
        specq.write_results(table, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.csv"]


# -- bench arguments ------------------------------------------------------------------------
def test_bench_refuses_counts_that_cannot_be_benched_in_one_line(tmp_path):
    """``--spectra 0`` or ``-1`` ended in a FileNotFoundError traceback, ``--draws -2`` (and
    ``--draws 0`` for AstroNN) in the pipeline's ValueError; nothing is measured with them."""
    outs = _specq_side_by_side(
        [["bench", "--no-queue", "--spectra", "0"], ["bench", "--no-queue", "--spectra", "-1"],
         ["bench", "--no-queue", "--draws", "-2"], ["bench", "--no-queue", "--batch-size", "0"],
         ["bench", "--workers", "0"], ["bench", "--latency", "--rate", "nan"],
         ["bench", "--no-queue", "--pipeline", "astronn_dist", "--draws", "0", "--spectra", "2"]], tmp_path)
    for out, option in zip(outs[:-1], ("--spectra", "--spectra", "--draws", "--batch-size", "--workers", "--rate")):
        _one_line_error(out, f"argument {option}")
    _one_line_error(outs[-1], "--draws 0:", "astronn_dist needs at least 1 draws")
