"""An export read a few rows at a time writes the files a whole read writes, on SQLite and PostgreSQL.

Chunks of two or three rows put a chunk boundary between every kind of value: a longer text
in a later chunk, a model, a draw count or demo weights first seen after the first chunk,
an unknown integer, a NaN.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

import workers.export as export
from test_export import OTHER_SHA, _bossnet_row
from workers.export import chunks_table, export_results, read_results, results_table, write_results
from workers.store import ResultStore, schemas

FORMATS = ("fits", "parquet", "csv")
CREATED = dt.datetime(2025, 3, 14, 22, 0, tzinfo=dt.timezone.utc)


def _rows() -> list[dict]:
    rows = [_bossnet_row(i) for i in range(11)]
    rows[1].update(sdss_id=None, fe_h=None, mjd=2**40)  # unknown, NaN, too wide for int32
    rows[4].update(path="spec-4-" + "x" * 70 + ".fits", worker="wörker, \"quoted\"\nline")  # longer, later
    rows[5].update(model_sha256=OTHER_SHA, draws=50, result_flags=3, flag_bad=True)
    rows[7].update(demo_weights=True, error="cannot read spec-7.fits: bad HDU")
    rows[9].update(telescope=None, snr=None)
    return rows


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> ResultStore:
    url = (f"sqlite:///{tmp_path / 'r.sqlite'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_schema_url"))
    store = ResultStore(url)
    store.write("bossnet", _rows())
    return store


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch):
    # One CREATED card for both files: everything else in them must be the same too.
    monkeypatch.setattr(export, "_now", lambda: CREATED)


def _card(card) -> tuple:
    return (card.keyword, card.value) if card.keyword == "DATASUM" else tuple(card)


def _assert_same_file(chunked, whole):
    """The same bytes; a FITS file's but for CHECKSUM and DATASUM's comments, which say when they were made."""
    if chunked.suffix != ".fits":
        assert chunked.read_bytes() == whole.read_bytes()
        return
    with fits.open(chunked) as a, fits.open(whole) as b:
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert [_card(c) for c in x.header.cards if c.keyword != "CHECKSUM"] == \
                   [_card(c) for c in y.header.cards if c.keyword != "CHECKSUM"]
            assert (x.data is None and y.data is None) or x.data.tobytes() == y.data.tobytes()


def _assert_same_table(chunked, whole):
    assert chunked.colnames == whole.colnames and dict(chunked.meta) == dict(whole.meta)
    for name in whole.colnames:
        a, b = chunked[name], whole[name]
        assert a.dtype == b.dtype and type(a) is type(b), name
        assert (a.unit, a.description) == (b.unit, b.description), name
        assert np.array_equal(np.ma.getmaskarray(a), np.ma.getmaskarray(b)), name
        assert np.array_equal(np.asarray(a), np.asarray(b), equal_nan=a.dtype.kind == "f"), name


@pytest.mark.parametrize("size", [1, 2, 3, 100])
def test_a_table_read_in_chunks_is_the_table_of_every_row(store, size):
    schema = schemas()["bossnet"]
    whole = results_table(schema, store.rows("bossnet"), all_columns=True)
    _assert_same_table(store.table("bossnet", all_columns=True, chunk_rows=size), whole)
    assert whole.meta["NMODELS"] == 2 and whole.meta["DEMO"] is True and whole["path"].dtype.itemsize // 4 > 70


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("suffix", FORMATS)
def test_an_export_in_chunks_writes_the_file_a_whole_read_writes(store, tmp_path, suffix, size):
    schema = schemas()["bossnet"]
    whole = write_results(results_table(schema, store.rows("bossnet"), all_columns=True), tmp_path / f"whole.{suffix}")
    ticks = []
    path, n, meta = export_results(schema, store.chunks("bossnet", size), tmp_path / f"chunked.{suffix}",
                                   all_columns=True, progress=ticks.append)
    _assert_same_file(path, whole)
    assert n == sum(ticks) == 11 and max(ticks) == size and meta["DEMO"] is True


@pytest.mark.parametrize("suffix", FORMATS)
def test_filtered_and_empty_exports_in_chunks_match_a_whole_read(store, tmp_path, suffix):
    schema = schemas()["bossnet"]
    for name, filters in (("bad", {"bad": True}), ("none", {"model": "ef"})):
        rows = store.rows("bossnet", **filters)
        whole = write_results(results_table(schema, rows), tmp_path / f"{name}-whole.{suffix}")
        path, n, _ = export_results(schema, store.chunks("bossnet", 2, **filters), tmp_path / f"{name}.{suffix}")
        assert n == len(rows) == (1 if name == "bad" else 0)
        _assert_same_file(path, whole)


def test_parquet_row_groups_split_where_the_chunks_do_not(store, tmp_path, monkeypatch):
    # Row groups of four rows from chunks of three: the groups' ends fall inside chunks.
    monkeypatch.setattr(export, "_ROW_GROUP_ROWS", 4)
    schema = schemas()["bossnet"]
    whole = write_results(results_table(schema, store.rows("bossnet"), all_columns=True), tmp_path / "whole.parquet")
    path, _, _ = export_results(schema, store.chunks("bossnet", 3), tmp_path / "chunked.parquet", all_columns=True)
    assert pq.ParquetFile(path).num_row_groups > 1
    assert pq.read_table(path).equals(pq.read_table(whole), check_metadata=True)
    _assert_same_table(read_results(path), read_results(whole))


def test_a_failed_export_leaves_no_cut_file(tmp_path):
    def chunks():
        yield export.columns_of([_bossnet_row(0)], schemas()["bossnet"])
        raise RuntimeError("the database went away")

    for suffix in ("parquet", "csv"):
        with pytest.raises(RuntimeError):
            export_results(schemas()["bossnet"], chunks(), tmp_path / f"out.{suffix}")
        assert not (tmp_path / f"out.{suffix}").exists(), suffix


def test_the_chunks_of_rows_in_memory_make_their_table():
    schema = schemas()["bossnet"]
    rows = _rows()
    parts = [export.columns_of(rows[i:i + 4], schema) for i in range(0, len(rows), 4)]
    _assert_same_table(chunks_table(schema, parts), results_table(schema, rows))


def test_a_csv_in_chunks_is_the_csv_astropy_writes_of_the_whole_table(store, tmp_path):
    table = results_table(schemas()["bossnet"], store.rows("bossnet"), all_columns=True)
    table.meta = {}
    for column in table.itercols():
        if column.dtype == np.float32:
            column.format = export._float32_text
    table.write(tmp_path / "astropy.csv", format="ascii.csv")
    path, _, _ = export_results(schemas()["bossnet"], store.chunks("bossnet", 2), tmp_path / "chunked.csv",
                                all_columns=True)
    assert path.read_bytes() == (tmp_path / "astropy.csv").read_bytes()
