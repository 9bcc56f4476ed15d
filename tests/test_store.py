import math
import threading

import numpy as np
import pytest
from astropy.table import Table

from workers.export import results_table, write_results
from workers.store import ResultStore


def _row(key="a.fits:1:0", teff=5000.0, sha="s" * 64, flags=0, **kw):
    row = dict(spectrum_key=key, path=key.split(":")[0], hdu=1, row=0, teff=teff, e_teff=10.0, logg=4.0,
               e_logg=0.1, fe_h=0.0, e_fe_h=0.05, bn_v_r=1.0, e_bn_v_r=2.0, result_flags=flags,
               flag_warn=False, flag_bad=False, model_sha256=sha, demo_weights=True, task_id="t1")
    row.update(kw)
    return row


def _stores(tmp_path, postgres_schema_url):
    return [ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}"), ResultStore(postgres_schema_url)]


def test_a_server_that_never_answers_is_one_connect_timeout_not_one_per_attempt(monkeypatch):
    import socket

    import sqlalchemy as sa

    from workers import store as store_module

    monkeypatch.setattr(store_module, "CONNECT_TIMEOUT_S", 2)  # libpq's least
    with socket.socket() as server:  # takes connections and never answers, as Redis's port does a PostgreSQL client
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        store = ResultStore(f"postgresql+psycopg://postgres@127.0.0.1:{server.getsockname()[1]}/x")
        with pytest.raises(sa.exc.OperationalError, match="timeout"):
            store.create()
        server.setblocking(False)
        tries = 0
        while True:
            try:
                server.accept()[0].close()
            except BlockingIOError:
                break
            tries += 1
    assert tries == 1


def test_tables_come_from_the_schemas(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}").create()
    for pipeline, schema in store.schemas.items():
        cols = set(store.tables[pipeline].columns.keys())
        for f in schema.all_fields:
            assert f.name in cols
        assert {"spectrum_key", "model_sha256", "code_version", "task_id", "created", "t_elapsed",
                "result_flags", "flag_warn", "flag_bad", "error", "demo_weights"} <= cols


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_same_spectrum_same_model_leaves_one_row(tmp_path, postgres_schema_url, backend):
    store = {s.engine.dialect.name: s for s in _stores(tmp_path, postgres_schema_url)}[backend]
    store.write("bossnet", [_row(teff=5000.0)])
    store.write("bossnet", [_row(teff=5100.0)])  # a retry/duplicate overwrites
    store.write("bossnet", [_row(sha="t" * 64)])  # another model is another row
    rows = store.rows("bossnet")
    assert len(rows) == 2
    first = [r for r in rows if r["model_sha256"] == "s" * 64][0]
    assert first["teff"] == 5100.0
    store.write("bossnet", [_row(key="b.fits:1:0", teff=float("nan"), flags=1)])
    nan_row = [r for r in store.rows("bossnet") if r["spectrum_key"] == "b.fits:1:0"][0]
    assert nan_row["teff"] is None and nan_row["result_flags"] == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_failure_never_replaces_a_result(tmp_path, postgres_schema_url, backend, caplog):
    from workers.pipeline import UNLOADED_MODEL_SHA

    store = {s.engine.dialect.name: s for s in _stores(tmp_path, postgres_schema_url)}[backend]

    def failure(key, reason, sha="s" * 64):
        return _row(key=key, teff=float("nan"), flags=1, flag_bad=True, error=reason, sha=sha)

    assert store.write("bossnet", [_row(key="good.fits:1:0", teff=6326.0), failure("bad.fits:1:0", "first"),
                                   _row(key="empty.fits:1:0", teff=5000.0, error="")]) == 3
    # A redelivered message fails on the good spectrum (a shutdown seen as an error, a bug):
    # its result stays; the failure of a spectrum that never had a result is updated.
    with caplog.at_level("WARNING", logger="specq.store"):
        written = store.write("bossnet", [failure("good.fits:1:0", "NotImplementedError: kill_job"),
                                          failure("bad.fits:1:0", "second"), failure("new.fits:1:0", "third")])
    assert written == 2 and store.failures_kept_out == 1
    assert "kept the stored result of 1 spectra" in caplog.text and "good.fits:1:0" in caplog.text
    assert store.write("bossnet", [failure("empty.fits:1:0", "late failure")]) == 0  # "" error: a result
    rows = {r["spectrum_key"]: r for r in store.rows("bossnet")}
    assert rows["good.fits:1:0"]["teff"] == 6326.0 and rows["good.fits:1:0"]["result_flags"] == 0
    assert rows["good.fits:1:0"]["error"] is None
    assert rows["bad.fits:1:0"]["error"] == "second" and rows["new.fits:1:0"]["error"] == "third"
    # A result still replaces a failure.
    assert store.write("bossnet", [_row(key="bad.fits:1:0", teff=5100.0)]) == 1
    fixed = [r for r in store.rows("bossnet") if r["spectrum_key"] == "bad.fits:1:0"]
    assert len(fixed) == 1 and fixed[0]["teff"] == 5100.0 and fixed[0]["error"] is None
    # A model-less placeholder (a failure row) is replaced by a model's result, and
    # a later placeholder or failure does not come back over it.
    store.write("bossnet", [failure("wait.fits:1:0", "model not loaded", sha=UNLOADED_MODEL_SHA)])
    assert store.write("bossnet", [_row(key="wait.fits:1:0", teff=4800.0)]) == 1
    assert store.write("bossnet", [failure("wait.fits:1:0", "model not loaded", sha=UNLOADED_MODEL_SHA),
                                   failure("wait.fits:1:0", "boom")]) == 0
    waiting = [r for r in store.rows("bossnet") if r["spectrum_key"] == "wait.fits:1:0"]
    assert [(r["model_sha256"], r["teff"]) for r in waiting] == [("s" * 64, 4800.0)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_result_settles_the_failures_of_its_file(tmp_path, postgres_schema_url, backend):
    from workers.pipeline import UNLOADED_MODEL_SHA

    store = {s.engine.dialect.name: s for s in _stores(tmp_path, postgres_schema_url)}[backend]

    def file_failure(path, sha="s" * 64):
        return _row(key=f"{path}:*:*", hdu=None, row=None, teff=float("nan"), flags=1, flag_bad=True,
                    error="not a FITS file", sha=sha)

    store.write("bossnet", [file_failure("a.fits"), file_failure("a.fits", sha="t" * 64),
                            file_failure("a.fits", sha=UNLOADED_MODEL_SHA), file_failure("other.fits")])
    # A failed spectrum of the file settles nothing; a result of model s settles s's and the
    # model-less failure of that file only.
    store.write("bossnet", [_row(key="a.fits:1:0", teff=float("nan"), flags=1, error="boom")])
    assert len(store.rows("bossnet")) == 5
    assert store.write("bossnet", [_row(key="a.fits:1:0", teff=5000.0)]) == 1
    keys = sorted((r["spectrum_key"], r["model_sha256"][0]) for r in store.rows("bossnet"))
    assert keys == [("a.fits:*:*", "t"), ("a.fits:1:0", "s"), ("other.fits:*:*", "s")]
    assert store.summary()["bossnet"]["errors"] == [("not a FITS file", 2)]
    # The file broken again later: its failure is written beside the result, which stays.
    assert store.write("bossnet", [file_failure("a.fits")]) == 1
    assert [r["teff"] for r in store.rows("bossnet") if r["spectrum_key"] == "a.fits:1:0"] == [5000.0]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_count_by_the_tasks_that_wrote_the_rows(tmp_path, postgres_schema_url, backend):
    store = {s.engine.dialect.name: s for s in _stores(tmp_path, postgres_schema_url)}[backend]
    store.write("bossnet", [_row(key="a.fits:1:0", task_id="t1"), _row(key="b.fits:1:0", task_id="t1")])
    store.write("bossnet", [_row(key="c.fits:1:0", task_id="t2")])
    assert store.count("bossnet") == 3
    assert store.count("bossnet", task_ids=["t1"]) == 2 and store.count(task_ids=["t2", "t9"]) == 1
    store.write("bossnet", [_row(key="a.fits:1:0", task_id="t3")])  # a rerun rewrites the row
    assert store.count(task_ids=["t3"]) == 1 and store.count(task_ids=["t1"]) == 1
    assert store.count(task_ids=[]) == 0


def test_delivery_counting_and_dead_letters(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}")
    assert [store.count_delivery("task:0") for _ in range(3)] == [1, 2, 3]
    assert store.count_delivery("task:1") == 1
    store.dead_letter("task", "bossnet", [{"path": "a.fits"}], "kills its worker", 4)
    store.dead_letter("task", "bossnet", [{"path": "a.fits"}], "kills its worker", 5)
    rows = store.dead_letter_rows()
    assert len(rows) == 1 and rows[0]["deliveries"] == 5 and rows[0]["refs"] == [{"path": "a.fits"}]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_deliveries_are_each_counted_once(tmp_path, postgres_schema_url, backend):
    """Workers receiving the same message at once: every delivery counted, no two see the same count."""
    url = {"sqlite": f"sqlite:///{tmp_path / 'r.sqlite'}", "postgresql": postgres_schema_url}[backend]
    ResultStore(url).create()
    n_writers, per_writer = 6, 15
    start = threading.Barrier(n_writers)
    seen: list[int] = []

    def deliver():
        store = ResultStore(url)  # its own engine and connections, as a worker process has
        store.create()
        start.wait()
        counts = [store.count_delivery("task:0") for _ in range(per_writer)]
        store.engine.dispose()
        seen.extend(counts)

    writers = [threading.Thread(target=deliver) for _ in range(n_writers)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    total = n_writers * per_writer
    assert sorted(seen) == list(range(1, total + 1))
    assert ResultStore(url).count_delivery("task:0") == total + 1


@pytest.mark.parametrize("suffix", [".csv", ".fits", ".parquet"])
def test_export_formats_keep_columns_units_and_demo_label(tmp_path, suffix):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}")
    store.write("bossnet", [_row(), _row(key="b.fits:2:3", teff=float("nan"), flags=1, flag_bad=True)])
    table = store.table("bossnet")
    fields = ["teff", "e_teff", "logg", "e_logg", "fe_h", "e_fe_h", "bn_v_r", "e_bn_v_r"]
    at = table.colnames.index("teff")
    assert table.colnames[at - 3:at + len(fields) + 3] == ["path", "hdu", "row", *fields, "result_flags",
                                                            "flag_warn", "flag_bad"]
    out = write_results(table, tmp_path / f"out{suffix}")
    back = Table.read(out, hdu="BOSS") if suffix == ".fits" else Table.read(out)
    assert len(back) == 2
    assert back["teff"][0] == pytest.approx(5000.0)
    assert math.isnan(float(back["teff"][1])) or np.ma.is_masked(back["teff"][1])
    assert [str(v) for v in back["demo_weights"]] == ["True", "True"]
    if suffix == ".fits":
        assert back.meta["DEMO"] is True
        assert str(back["teff"].unit) == "K"
def test_unknown_extension_is_a_clear_error(tmp_path):
    from workers.bossnet.schema import BOSSNET_SCHEMA

    with pytest.raises(ValueError, match=r"use .csv, .fits, .fits.gz or .parquet"):
        write_results(results_table(BOSSNET_SCHEMA, [_row()]), tmp_path / "out.xlsx")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_older_store_takes_the_one_names_and_loses_nothing(tmp_path, postgres_schema_url, backend):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'r.sqlite'}" if backend == "sqlite" else postgres_schema_url
    values = [dict(spectrum_key=f"apStar-{i}.fits:1:0", path=f"apStar-{i}.fits", hdu=1, row=0, model_sha256="s" * 64,
                   nn_dist=1000.0 + i, nn_dist_err=50.0 + i, a_k_mag=0.1 * i, L_fakemag=200.0, L_fakemag_err=5.0 + i,
                   obj=f"2M0000000{i}+0000000", t_elapsed=0.25, result_flags=0) for i in range(3)]
    ResultStore(url).write("astronn_dist", values)
    renamed = {"nn_dist": "dist", "nn_dist_err": "e_dist", "a_k_mag": "A_k_mag", "L_fakemag_err": "e_L_fakemag",
               "obj": "apogee_id", "t_elapsed": "elapsed"}
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the table as an older specq made it
        for new, old in renamed.items():
            conn.execute(sa.text(f'ALTER TABLE astronn_dist_results RENAME COLUMN "{new}" TO "{old}"'))
        # A process that added one of the new columns (empty) before it renamed anything.
        conn.execute(sa.text('ALTER TABLE astronn_dist_results ADD COLUMN "nn_dist" FLOAT'))
    engine.dispose()

    store = ResultStore(url)
    rows = sorted(store.rows("astronn_dist"), key=lambda r: r["spectrum_key"])
    assert len(rows) == 3
    for row, expected in zip(rows, values):
        for name in renamed:
            assert row[name] == pytest.approx(expected[name]) if isinstance(expected[name], float) \
                else row[name] == expected[name], name
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns("astronn_dist_results")}
    assert not columns & set(renamed.values()) and set(renamed) <= columns
    ResultStore(url).create()  # a second opening finds nothing to do
    assert store.table("astronn_dist")["nn_dist"][0] == pytest.approx(1000.0)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_summary_counts_an_error_of_many_files_as_one(tmp_path, postgres_schema_url, backend):
    from workers.store import FILE_IN_ERROR

    store = {s.engine.dialect.name: s for s in _stores(tmp_path, postgres_schema_url)}[backend]
    rows = [_row(key=f"night/{name}.fits:1:0", teff=float("nan"), flags=1,
                 error=f"still unreadable on the last attempt: /data/night/{name}.fits: file not found")
            for name in ("a", "b", "c")]
    rows.append(_row(key="d.fits:1:0", teff=float("nan"), flags=1, error="ValueError: bad pixels"))
    store.write("bossnet", rows)
    assert store.summary()["bossnet"]["errors"] == [
        (f"still unreadable on the last attempt: /data/{FILE_IN_ERROR}: file not found", 3),
        ("ValueError: bad pixels", 1)]
