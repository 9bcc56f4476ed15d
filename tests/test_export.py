"""Results as astronomers take them: the SDSS summary-file layout, the same columns in every
format, values from the spectrum files' own headers, filters, plots and the summary."""
from __future__ import annotations

import datetime as dt
import functools
import subprocess
import sys

import numpy as np
import pytest
import yaml
from astropy.io import fits

from conftest import DATA, ROOT
from workers.export import read_results, results_table, write_results
from workers import registry
from workers.schema import LOCATOR_FIELDS
from workers.store import ResultStore, schemas

SHA = "ab" * 32
OTHER_SHA = "cd" * 32
NOW = dt.datetime.now(dt.timezone.utc)
# The summary products each pipeline's columns are checked against (DR20: BossNet's bn_v_r).
# Both tables of a product have the same specq columns, so both HDUs' columns count (obj is
# an APOGEE HDU column).
PRODUCTS = {"bossnet": [("astraAllStarBossNet", "hdu1"), ("astraAllVisitBossNet", "hdu1"),
                        ("astraAllStarBossNet", "hdu2")],
            "astronn_dist": [("astraAllStarAstroNNdist", "hdu2"), ("astraAllStarAstroNNdist", "hdu1")]}
# FITS TFORM letter → the data model's type name.
TFORM_TYPES = {"E": "float32", "D": "float64", "I": "int16", "J": "int32", "K": "int64", "L": "bool"}
# Columns of specq's own, in no SDSS summary product: where the spectrum is, what made the row.
SPECQ_OWN = {"spectrum_key", "path", "hdu", "row", "error", "model_sha256", "demo_weights", "draws", "precision",
             "code_version", "task_id", "worker"}


@functools.lru_cache(maxsize=None)
def _product(name: str) -> dict:
    """A summary product's data model (the C loader: these files are large)."""
    return yaml.load((DATA / "datamodel" / f"{name}.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _datamodel_columns(pipeline: str) -> dict[str, dict]:
    """name → {type, unit} over the products' DR20 HDUs, the pipeline's own first.

    The other products come after: the source columns are shared by every pipeline, and a
    visit's ``mjd`` is a column of the visit product only (always empty for AstroNN, which
    reads combined spectra).
    """
    columns: dict[str, dict] = {}
    others = [p for name, products in PRODUCTS.items() if name != pipeline for p in products]
    for product, hdu in PRODUCTS[pipeline] + others:
        for name, column in _product(product)["releases"]["DR20"]["hdus"][hdu]["columns"].items():
            columns.setdefault(name, column)
    return columns


def _bossnet_row(i: int, **kw) -> dict:
    row = dict(spectrum_key=f"spec-{i}.fits:1:0", path=f"spec-{i}.fits", hdu=1, row=0, sdss_id=1000 + i,
               catalogid=27021598150202075 + i, gaia_dr3_source_id=5_000_000_000_000_000_000 + i,
               spectrum_pk=i + 1, ra=150.0 + i, dec=2.0, telescope="apo25m", mjd=60000 + i, snr=30.0,
               filetype="specLite", teff=4000.0 + 100 * i, e_teff=50.0, logg=4.5 - 0.2 * i, e_logg=0.1,
               fe_h=-0.1 * i, e_fe_h=0.05, bn_v_r=3.0 * i, e_bn_v_r=2.0, result_flags=0, flag_warn=False,
               flag_bad=False, model_sha256=SHA, demo_weights=False, draws=20, task_id="t1",
               worker="celery@host", t_elapsed=0.02, code_version="0.1.0")
    row.update(kw)
    return row


def _astronn_row(i: int, **kw) -> dict:
    row = dict(spectrum_key=f"apStar-{i}.fits:1:0", path=f"apStar-{i}.fits", hdu=1, row=0,
               apogee_id=f"2M0000000{i}+0000000", ra=20.0 + i, dec=-3.0, telescope="apo25m", min_mjd=59280,
               max_mjd=59290, snr=80.0, filetype="apStar", k_mag=9.0, ebv=0.1, a_k_mag=0.035, L_fakemag=50.0 + i,
               L_fakemag_err=5.0, L_fakemag_model_err=2.0, nn_dist=1000.0 * (i + 1), nn_dist_err=100.0, nn_parallax=1.0,
               nn_parallax_err=0.1, nn_parallax_model_err=0.05, result_flags=0, flag_warn=False, flag_bad=False,
               model_sha256=SHA, demo_weights=False, draws=100, task_id="t2", t_elapsed=0.01)
    row.update(kw)
    return row


ROWS = {"bossnet": _bossnet_row, "astronn_dist": _astronn_row}


def _store(tmp_path) -> ResultStore:
    return ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}")


@pytest.mark.parametrize("pipeline", ["bossnet", "astronn_dist"])
def test_every_written_column_is_named_typed_and_united_as_in_the_datamodel(tmp_path, pipeline):
    schema = schemas()[pipeline]
    store = _store(tmp_path)
    store.write(pipeline, [ROWS[pipeline](i) for i in range(3)])
    path = write_results(store.table(pipeline, all_columns=True), tmp_path / "out.fits")
    datamodel = _datamodel_columns(pipeline)
    flag_names = {f.name for f in schema.flags}
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "BOSS", "APOGEE"]
        primary = hdul[0].header
        model = _product(PRODUCTS[pipeline][0][0])
        published = {c["key"]: c["value"] for c in model["releases"]["DR20"]["hdus"]["hdu0"]["header"]}
        assert primary["PIPELINE"] == published["PIPELINE"]
        assert primary["MODEL"] == SHA and primary["DRAWS"] == (20 if pipeline == "bossnet" else 100)
        assert primary["DEMO"] is False and primary["V_SPECQ"]
        assert dt.datetime.strptime(primary["CREATED"], "%y-%m-%d %H:%M:%S")
        assert list(primary["COMMENT"]) == ["HDU 0: Summary information only", "HDU 1: BOSS spectra",
                                            "HDU 2: APOGEE spectra"]
        boss = registry.get(pipeline).instrument == "boss"
        full, empty = (hdul["BOSS"], hdul["APOGEE"]) if boss else (hdul["APOGEE"], hdul["BOSS"])
        assert len(full.data) == 3 and len(empty.data) == 0
        assert empty.columns.names == full.columns.names
        own = set()
        for i, column in enumerate(full.columns, 1):
            assert full.header.get(f"TCOMM{i}"), f"{column.name} has no description"
            published = datamodel.get(column.name)
            if published is None:
                own.add(column.name)
                continue
            kind = "char" if column.format.endswith("A") else TFORM_TYPES[column.format[-1]]
            assert published["type"].split("[")[0] == kind, column.name
            assert (column.unit or "") == published["unit"], column.name
    assert own == SPECQ_OWN | flag_names  # nothing else is specq's own invention
    assert {"sdss_id", "catalogid", "gaia_dr3_source_id", "ra", "dec", "telescope", "snr", "spectrum_pk",
            "result_flags", "flag_warn", "flag_bad", "created", "t_elapsed"} <= set(full.columns.names)


def test_source_columns_come_from_the_spectrum_files(tmp_path):
    from specq.testing import synthetic
    from workers.refs import SpectrumRef
    from workers import engine
    from workers import row as result_row

    synthetic.write_spec_lite(tmp_path / "spec-1-2-3.fits", teff=5200, logg=4.4, fe_h=-0.3, v_r=20, snr=30, seed=1,
                              mjd=60123)
    synthetic.write_mwm_star(tmp_path / "mwmStar-0.8.1-6.fits", boss=dict(teff=6000, logg=4.2, fe_h=0.0, snr=40, seed=5),
                             apogee=dict(teff=6000, logg=4.2, fe_h=0.0, snr=45, seed=6, fakemag=50.0, mjd=60005),
                             sdss_id=6, catalogid=66, apogee_id="2M00000003+0000003")
    synthetic.write_apstar(tmp_path / "apStar-1.0-lco25m-2M00000002+0000002.fits", teff=5100, logg=3.4, fe_h=0.1,
                           fakemag=30, snr=60, seed=2, nvisits=3, apogee_id="2M00000002+0000002", release="DR19")

    def identity(name, instrument):
        jobs = engine.read_jobs(SpectrumRef(name), tmp_path, instrument)
        assert all(job.error is None for job in jobs)
        return [result_row.identity(job.ref, job.spectrum) for job in jobs]

    with fits.open(tmp_path / "spec-1-2-3.fits") as hdul:
        spall = hdul["SPALL"].data[0]
        boresight = hdul[0].header["RA"]
    [lite] = identity("spec-1-2-3.fits", "boss")
    assert lite["catalogid"] == int(spall["CATALOGID"]) and lite["mjd"] == 60123 and lite["telescope"] == "apo25m"
    assert lite["ra"] == pytest.approx(spall["RACAT"]) and lite["dec"] == pytest.approx(spall["DECCAT"])
    assert lite["snr"] == pytest.approx(30.0) and lite["filetype"] == "specLite"
    assert boresight == pytest.approx(spall["RACAT"])  # synthetic: same numbers, but the SPALL row is read

    with fits.open(tmp_path / "mwmStar-0.8.1-6.fits") as hdul:
        header, apogee = hdul[0].header, hdul["APOGEE/APO"].data[0]
    [star] = identity("mwmStar-0.8.1-6.fits", "apogee")
    assert (star["sdss_id"], star["catalogid"], star["gaia_dr3_source_id"]) == (6, 66, header["GAIA3_ID"])
    assert star["ra"] == pytest.approx(header["RA"]) and star["dec"] == pytest.approx(header["DEC"])
    assert (star["min_mjd"], star["max_mjd"], star["telescope"]) == (60005, 60005, apogee["telescope"])
    assert star["spectrum_pk"] == apogee["spectrum_pk"] and star["snr"] == pytest.approx(45.0)
    assert star["obj"] == "2M00000003+0000003" and star["filetype"] == "mwmStar" and star["mjd"] is None

    [ap] = identity("apStar-1.0-lco25m-2M00000002+0000002.fits", "apogee")
    assert (ap["telescope"], ap["min_mjd"], ap["max_mjd"]) == ("lco25m", 59280, 59286)  # JD1..JD3
    assert ap["obj"] == "2M00000002+0000002" and ap["snr"] == pytest.approx(60.0)

    # Through the store into an export: every row carries them.
    store = _store(tmp_path)
    store.write("astronn_dist", [{**_astronn_row(0), **star}, {**_astronn_row(1), **ap}])
    back = read_results(write_results(store.table("astronn_dist"), tmp_path / "out.fits"))
    assert list(back["obj"]) == ["2M00000003+0000003", "2M00000002+0000002"]
    assert list(back["gaia_dr3_source_id"].filled(-1)) == [header["GAIA3_ID"], -1]
    assert list(back["max_mjd"]) == [60005, 59286] and list(back["telescope"]) == [apogee["telescope"], "lco25m"]


def test_an_id_beyond_64_bits_is_unknown_and_the_rows_are_written(tmp_path):
    """A header or a name may hold any number; the store and the files hold 64-bit integers."""
    from specq.testing import synthetic
    from workers import engine
    from workers import row as result_row
    from workers.refs import SpectrumRef

    path = tmp_path / "apStar-1.0-apo25m-2M00000002+0000002.fits"
    synthetic.write_apstar(path, teff=5100, logg=3.4, fe_h=0.1, fakemag=30, snr=60, seed=2, k_mag=9.0,
                           catalogid=2**63 - 1, apogee_id="2M00000002+0000002", release="DR19")
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["SDSS_ID"] = 10**30
        hdul[0].header.set("CATID", 1e30)
        hdul.flush()
    [job] = engine.read_jobs(SpectrumRef(path.name), tmp_path, "apogee")
    ids = result_row.identity(SpectrumRef(path.name, ids={"gaia_dr3_source_id": -2**63 - 1}), job.spectrum)
    assert (ids["sdss_id"], ids["catalogid"], ids["gaia_dr3_source_id"]) == (None, None, None)
    assert result_row.identity(SpectrumRef("a.fits", ids={"catalogid": 2**63 - 1}))["catalogid"] == 2**63 - 1
    store = _store(tmp_path)
    store.write("astronn_dist", [{**_astronn_row(0), **ids}])
    for name in ("out.csv", "out.parquet", "out.fits"):
        back = read_results(write_results(store.table("astronn_dist"), tmp_path / name))
        assert back["obj"][0] == "2M00000002+0000002" and back["sdss_id"][0] is np.ma.masked


def test_csv_parquet_and_fits_carry_the_same_columns_and_values(tmp_path):
    store = _store(tmp_path)
    store.write("bossnet", [_bossnet_row(0), _bossnet_row(1, sdss_id=None, result_flags=0b10010, flag_warn=True,
                                                           flag_bad=True, error=None)])
    table = store.table("bossnet")
    tables = {suffix: read_results(write_results(table, tmp_path / f"out{suffix}"))
              for suffix in (".fits", ".csv", ".parquet")}
    for suffix, back in tables.items():
        assert back.colnames == table.colnames, suffix
        assert list(back["sdss_id"].filled(-1) if hasattr(back["sdss_id"], "filled") else back["sdss_id"]) \
            == [1000, -1], suffix
        assert list(back["flag_unreliable_teff"]) == [False, True] and list(back["flag_suspicious_fe_h"]) == [False, True]
        assert back["logg"][1] == pytest.approx(4.3, rel=1e-6) and back["teff"][0] == 4000.0
        assert [str(v) if v is not np.ma.masked else "" for v in back["error"]] == ["", ""]
    assert str(tables[".parquet"]["bn_v_r"].unit) == "km / s"
    assert tables[".parquet"].meta["MODEL"] == SHA
    assert table["teff"].dtype == np.float32 and table["mjd"].dtype == np.int32 and table["sdss_id"].dtype == np.int64
    assert "spectrum_key" not in table.colnames and "error" in table.colnames


def test_a_csv_is_given_a_pipeline_only_when_its_columns_are_that_pipelines_alone(tmp_path):
    from workers.export import pipelines_of_columns

    store = _store(tmp_path)
    store.write("bossnet", [_bossnet_row(0)])
    store.write("astronn_dist", [_astronn_row(0)])
    boss = read_results(write_results(store.table("bossnet"), tmp_path / "b.csv"))
    dist = read_results(write_results(store.table("astronn_dist", all_columns=True), tmp_path / "d.csv"))
    assert dist.meta["specq_pipeline"] == "astronn_dist"
    # BossNet on LAMOST writes BossNet's columns: a CSV of either names neither.
    assert pipelines_of_columns(boss.colnames) == ["bossnet", "bossnet_lamost"]
    assert "specq_pipeline" not in boss.meta
    assert pipelines_of_columns(boss.colnames[:-3]) == pipelines_of_columns(boss.colnames)  # provenance aside
    stellar = [c for c in boss.colnames if c not in ("bn_v_r", "e_bn_v_r")]
    assert pipelines_of_columns(stellar) == ["bossnet_apogee", "bossnet_gaia_rvs", "bossnet_gaia_xp"]
    assert pipelines_of_columns(["path", "teff"]) == []


def test_all_columns_adds_the_provenance(tmp_path):
    store = _store(tmp_path)
    before = dt.datetime.now(dt.timezone.utc)
    store.write("bossnet", [_bossnet_row(0)])
    after = dt.datetime.now(dt.timezone.utc)
    plain, full = store.table("bossnet"), store.table("bossnet", all_columns=True)
    added = [c for c in full.colnames if c not in plain.colnames]
    assert added == ["spectrum_key", "code_version", "task_id", "worker", "created", "t_elapsed"]
    assert full["worker"][0] == "celery@host" and full["t_elapsed"].unit == "s"
    # ISO time of the write, UTC (the module's NOW is from collection: a slow suite runs long after it).
    created = dt.datetime.fromisoformat(full["created"][0]).replace(tzinfo=dt.timezone.utc)
    assert "T" in full["created"][0] and before - dt.timedelta(seconds=1) <= created <= after + dt.timedelta(seconds=1)


def _specq(*args, env):
    return subprocess.run([sys.executable, "-m", "specq.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


@pytest.fixture
def cli_env(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECQ_")}
    env.update(SPECQ_CONFIG=os.devnull, SPECQ_DATABASE_URL=f"sqlite:///{tmp_path / 'r.sqlite'}",
               SPECQ_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(ROOT))
    return env


def test_several_pipelines_never_share_one_file(tmp_path, cli_env):
    store = _store(tmp_path)
    store.write("bossnet", [_bossnet_row(0)])
    store.write("astronn_dist", [_astronn_row(0)])
    refused = _specq("results", "export", "-o", tmp_path / "results.fits", env=cli_env)
    assert refused.returncode == 2 and "{pipeline}" in refused.stderr and "--pipeline" in refused.stderr
    assert not list(tmp_path.glob("results*.fits"))
    done = _specq("results", "export", "-o", tmp_path / "results-{pipeline}.fits", env=cli_env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.glob("results*.fits")) == ["results-astronn_dist.fits",
                                                                       "results-bossnet.fits"]
    one = _specq("results", "export", "--pipeline", "bossnet", "-o", tmp_path / "b.fits", env=cli_env)
    assert one.returncode == 0 and (tmp_path / "b.fits").exists()

    from specq.cli import output_paths

    with pytest.raises(ValueError, match="one file holds one pipeline"):
        output_paths("out.csv", ["bossnet", "astronn_dist"], "run")


def test_export_filters_select_rows_in_the_database(tmp_path):
    from specq.cli import main

    store = _store(tmp_path)
    night = dt.datetime(2025, 3, 14, 22, 0, tzinfo=dt.timezone.utc)
    store.write("bossnet", [
        _bossnet_row(0, created=night - dt.timedelta(days=2)),
        _bossnet_row(1, created=night, flag_bad=True, result_flags=2),
        _bossnet_row(2, created=night + dt.timedelta(hours=6), model_sha256=OTHER_SHA, demo_weights=True),
        _bossnet_row(3, created=night + dt.timedelta(days=3))])
    import os

    os.environ["SPECQ_DATABASE_URL"] = store.url  # the autouse fixture restores the environment

    def exported(*flags):
        out = tmp_path / "f.csv"
        assert main(["results", "export", "--pipeline", "bossnet", "-o", str(out), *flags]) == 0
        return [p for p in read_results(out)["path"]]

    assert exported("--since", "2025-03-14T12:00", "--until", "2025-03-15T12:00") == ["spec-1.fits", "spec-2.fits"]
    assert exported("--since", "2025-03-16") == ["spec-3.fits"]
    assert exported("--bad") == ["spec-1.fits"]
    assert exported("--good", "--until", "2025-03-14") == ["spec-0.fits"]
    assert exported("--model", OTHER_SHA[:6].upper()) == ["spec-2.fits"]
    assert exported("--published-only") == ["spec-0.fits", "spec-1.fits", "spec-3.fits"]
    with pytest.raises(SystemExit):
        main(["results", "export", "-o", "x.csv", "--bad", "--good"])
    with pytest.raises(SystemExit):
        main(["results", "export", "-o", "x.csv", "--since", "last tuesday"])


def test_plots_from_the_store_and_from_a_file(tmp_path, cli_env):
    from workers.bossnet import plots

    store = _store(tmp_path)
    store.write("bossnet", [_bossnet_row(i) for i in range(6)] + [_bossnet_row(9, flag_bad=True, teff=99999.0)])
    store.write("astronn_dist", [_astronn_row(i) for i in range(4)])
    done = _specq("results", "plot", "-o", tmp_path / "plots", env=cli_env)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["astronn_dist-distance.png", "astronn_dist-fakemag-distance.png", "bossnet-fe_h.png",
                     "bossnet-kiel.png", "bossnet-v_r.png"]
    for name in names:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    exported = write_results(store.table("bossnet"), tmp_path / "b.fits")
    from_file = _specq("results", "plot", "-i", exported, "-o", tmp_path / "from_file", env=cli_env)
    assert from_file.returncode == 0, from_file.stderr
    assert len(list((tmp_path / "from_file").glob("bossnet-*.png"))) == 3

    table = read_results(exported)
    fig = plots.kiel(table)
    ax = fig.axes[0]
    assert ax.xaxis_inverted() and ax.yaxis_inverted()  # hot stars left, dwarfs at the bottom
    assert len(ax.collections[0].get_offsets()) == 6 and "1 flag_bad hidden" in ax.get_title()
    shown = plots.kiel(table, show_bad=True).axes[0]
    assert len(shown.collections[0].get_offsets()) == 7


def test_summary_counts_models_flags_recent_rows_and_errors(tmp_path, cli_env):
    store = _store(tmp_path)
    old = NOW - dt.timedelta(days=3)
    store.write("bossnet", [
        _bossnet_row(0, result_flags=0b00010, flag_bad=True),
        _bossnet_row(1, result_flags=0b10000, flag_warn=True, created=NOW - dt.timedelta(hours=3)),
        _bossnet_row(2, result_flags=0b00001, flag_bad=True, error="ValueError: bad pixels", created=old),
        _bossnet_row(3, result_flags=0b00001, flag_bad=True, error="ValueError: bad pixels", created=old,
                     model_sha256=OTHER_SHA, demo_weights=True),
        _bossnet_row(4, result_flags=0b00001, flag_bad=True, error="still unreadable", created=old)])
    counts = store.summary()["bossnet"]
    assert counts["rows"] == 5 and (counts["last_hour"], counts["last_day"]) == (1, 2)
    assert counts["models"] == [(SHA, False, 4), (OTHER_SHA, True, 1)]
    assert counts["flags"] == {"flag_runtime_exception": 3, "flag_unreliable_teff": 1, "flag_unreliable_logg": 0,
                               "flag_unreliable_fe_h": 0, "flag_suspicious_fe_h": 1}
    assert (counts["flag_warn"], counts["flag_bad"]) == (1, 4)
    assert counts["errors"] == [("ValueError: bad pixels", 2), ("still unreadable", 1)]
    text = _specq("results", "summary", env=cli_env)
    assert text.returncode == 0, text.stderr
    assert "bossnet: 5 rows (1 in the last hour, 2 in the last 24 h)" in text.stdout
    assert "flag_runtime_exception" in text.stdout and " 60.0 %" in text.stdout
    assert "[DEMO WEIGHTS]" in text.stdout and "2  ValueError: bad pixels" in text.stdout


def test_an_older_table_gets_the_new_columns(tmp_path, monkeypatch):
    from workers import store as store_module

    new = {f.name for f in store_module.SOURCE_FIELDS} | {"draws"}
    with monkeypatch.context() as m:  # a table made by a specq without the source columns
        m.setattr(store_module, "stored_fields", lambda schema: [
            f for f in [*LOCATOR_FIELDS, *schema.all_fields, *store_module.SUMMARY_FIELDS,
                        *store_module.RECORD_FIELDS, *store_module.PROVENANCE_FIELDS[1:]] if f.name not in new])
        ResultStore(f"sqlite:///{tmp_path / 'r.sqlite'}").write("bossnet", [_bossnet_row(0)])
    store = _store(tmp_path)
    store.write("bossnet", [_bossnet_row(1)])
    rows = {r["path"]: r for r in store.rows("bossnet")}
    assert rows["spec-0.fits"]["sdss_id"] is None and rows["spec-1.fits"]["sdss_id"] == 1001
    assert rows["spec-1.fits"]["gaia_dr3_source_id"] == 5_000_000_000_000_000_001


@pytest.mark.parametrize("name,gzip", [("out.fits", False), ("out.fits.gz", False), ("out.fits", True)])
def test_fits_exports_carry_valid_checksums_and_gzip_when_asked(tmp_path, name, gzip):
    import warnings

    from workers.readers.checksum import check_hdu

    store = _store(tmp_path)
    store.write("bossnet", [_bossnet_row(0), _bossnet_row(1, sdss_id=None)])
    path = write_results(store.table("bossnet"), tmp_path / name, gzip=gzip)
    assert path.name == ("out.fits.gz" if gzip or name.endswith(".gz") else "out.fits")
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == path.name.endswith(".gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # astropy warns on a checksum that does not verify
        with fits.open(path, checksum=True) as hdul:
            assert len(hdul) == 3
            for hdu in hdul:
                assert hdu.header["CHECKSUM"] and hdu.header["DATASUM"]
    # specq's own check agrees (the bytes as stored, decompressed).
    import gzip as gz

    data = gz.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    with fits.open(path) as hdul:
        for index, hdu in enumerate(hdul):
            info = hdu.fileinfo()
            check_hdu(f"HDU {index}", hdu.header, data[info["hdrLoc"]:info["datLoc"]],
                      data[info["datLoc"]:info["datLoc"] + info["datSpan"]])
    back = read_results(path)
    assert len(back) == 2 and list(back["sdss_id"].filled(-1)) == [1000, -1]


def test_export_gzip_option(tmp_path, cli_env):
    store = _store(tmp_path)
    store.write("bossnet", [_bossnet_row(0)])
    done = _specq("results", "export", "--pipeline", "bossnet", "--gzip", "-o", tmp_path / "b.fits", env=cli_env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "b.fits.gz").read_bytes()[:2] == b"\x1f\x8b" and not (tmp_path / "b.fits").exists()
    refused = _specq("results", "export", "--pipeline", "bossnet", "--gzip", "-o", tmp_path / "b.csv", env=cli_env)
    assert refused.returncode == 2 and "--gzip writes FITS" in refused.stderr


@pytest.mark.parametrize("pipeline", ["bossnet", "astronn_dist"])
def test_parquet_has_real_nulls_through_pyarrow_and_pandas(tmp_path, pipeline):
    import pandas as pd
    import pyarrow.parquet as pq

    store = _store(tmp_path)
    make = _bossnet_row if pipeline == "bossnet" else _astronn_row
    store.write(pipeline, [make(0), make(1, sdss_id=None, catalogid=None, gaia_dr3_source_id=None,
                                         spectrum_pk=None, min_mjd=None, max_mjd=None, mjd=None)])
    table = store.table(pipeline, all_columns=True)
    path = write_results(table, tmp_path / "out.parquet")
    arrow = pq.read_table(path)
    assert arrow.column_names == table.colnames  # no *.mask columns
    for name in ("sdss_id", "catalogid", "gaia_dr3_source_id", "spectrum_pk", "min_mjd", "max_mjd", "mjd"):
        column = arrow.column(name)
        values = column.to_pylist()
        assert str(column.type).startswith("int") and column.null_count == values.count(None) >= 1, name
        assert values[1] is None and -1 not in values, name
    frame = pd.read_parquet(path)
    assert list(frame.columns) == table.colnames
    nullable = pd.read_parquet(path, dtype_backend="numpy_nullable")
    back = read_results(path)  # and back into astropy: masked integers of their own type
    assert back.colnames == table.colnames
    for name in ("catalogid", "spectrum_pk", "mjd"):
        known = ~np.ma.getmaskarray(table[name])
        assert frame[name].isna().tolist() == list(~known) and not (frame[name] == -1).any(), name
        assert str(nullable[name].dtype).startswith("Int") and nullable[name][known].tolist() == \
            list(np.asarray(table[name])[known]), name
        assert back[name].dtype == table[name].dtype and list(np.ma.getmaskarray(back[name])) == list(~known)
    for name in table.colnames:
        assert back[name].description == table[name].description, name
        assert str(back[name].unit or "") == str(table[name].unit or ""), name
