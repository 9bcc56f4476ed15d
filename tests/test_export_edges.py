"""Exports at their edges: output names as users type them, odd values, odd filters."""
from __future__ import annotations

import numpy as np
import pytest

from test_export import _bossnet_row
from workers.export import read_results, results_table, write_results
from workers.store import ResultStore, schemas


@pytest.mark.parametrize("suffix", ["fits", "parquet", "csv"])
def test_a_home_relative_output_is_written_in_home_and_nowhere_else(tmp_path, monkeypatch, suffix):
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir()
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    table = results_table(schemas()["bossnet"], [_bossnet_row(0)])
    written = write_results(table, f"~/new/out.{suffix}")
    assert written == home / "new" / f"out.{suffix}" and written.is_file()
    assert list(read_results(written)["sdss_id"]) == [1000]
    assert not list(here.iterdir())  # no folder named '~' beside the user


def test_an_integer_too_wide_for_its_column_is_unknown_and_every_row_exports(tmp_path):
    # A header MJD beyond int32 (a broken file) is stored as read; the export column is int32.
    store = ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}")
    store.write("bossnet", [_bossnet_row(0, mjd=2**40), _bossnet_row(1, min_mjd=-2**31 - 1), _bossnet_row(2)])
    table = store.table("bossnet")
    assert table["mjd"].dtype == np.int32
    assert list(np.ma.getmaskarray(table["mjd"])) == [True, False, False]
    assert list(np.ma.getmaskarray(table["min_mjd"])) == [True, True, True]
    assert list(table["mjd"][1:]) == [60001, 60002]
    for suffix in ("fits", "parquet", "csv"):
        back = read_results(write_results(table, tmp_path / f"out.{suffix}"))
        assert list(back["sdss_id"]) == [1000, 1001, 1002], suffix
        assert list(np.ma.getmaskarray(back["mjd"])) == [True, False, False], suffix


@pytest.mark.parametrize("name", ["OUT.FITS.GZ", "out.fit.Gz"])
def test_a_gz_name_in_any_case_is_gzipped(tmp_path, name):
    table = results_table(schemas()["bossnet"], [_bossnet_row(0), _bossnet_row(1)])
    path = write_results(table, tmp_path / name)
    assert path.name == name and path.read_bytes()[:2] == b"\x1f\x8b"  # gzip's magic bytes
    assert list(read_results(path)["sdss_id"]) == [1000, 1001]
    with pytest.raises(OSError):
        write_results(table, path, overwrite=False)
