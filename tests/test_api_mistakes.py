"""specq from Python, misused as a notebook would: each mistake is one SpecqError naming what was
passed, before anything runs or is sent; nothing is read in a way the caller did not mean."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

import specq
from conftest import RecordingApp
from specq.testing.synthetic import make_dataset

RUN = dict(demo_weights=True, draws=4, seed=7)
# A BOSS spectrum's pixels (vacuum Å), as docs/python.md makes them.
WAVELENGTH = 10 ** (3.5523 + 1e-4 * np.arange(4648))
FLAT = (WAVELENGTH, np.ones_like(WAVELENGTH), np.full_like(WAVELENGTH, 100.0))


@pytest.fixture(scope="module")
def boss(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-mistakes")
    make_dataset(root, n_boss=1, n_apogee=0, seed=3, formats=("spec-lite",))
    return root


def _refused(call, words: str) -> None:
    with pytest.raises(specq.SpecqError, match=words):
        call()


def test_a_pipeline_of_the_wrong_type_is_one_clear_error(boss):
    for call in (lambda: specq.predict(boss, 3, **RUN),
                 lambda: specq.predict(boss, ["bossnet", 3], **RUN),
                 lambda: specq.results(3),
                 lambda: specq.submit([str(boss)], 3)):
        _refused(call, r"pipelines?=.*3.*: give a pipeline's name")
    # any iterable of names is a list of names
    app = RecordingApp(specq_settings(boss))
    assert specq.submit([str(boss)], {"bossnet"}, celery_app=app, settings=app.specq_settings).refs["bossnet"]


def specq_settings(root):
    from workers.settings import load_settings

    return load_settings(data_root=str(root))


def test_a_seed_that_is_not_a_number_is_named(boss):
    _refused(lambda: specq.predict(boss, "bossnet", demo_weights=True, seed="x"),
             r"seed must be a whole number, not 'x'")


def test_what_iterating_would_take_apart_is_refused_whole(boss):
    import pandas as pd
    from astropy.table import Table

    _refused(lambda: specq.predict(str(boss).encode(), "bossnet", **RUN), "cannot predict from a bytes")
    _refused(lambda: specq.predict({"path": str(boss)}, "bossnet", **RUN), "cannot predict from a dict")
    for table in (Table({"fieldid": [101077]}), pd.DataFrame({"fieldid": [101077]})):
        _refused(lambda: specq.predict(table, "bossnet", **RUN),
                 rf"cannot predict from a {type(table).__name__} \(a target table goes with release= and product=\)")


def test_array_metadata_is_checked_not_misread():
    mistakes = [({"sdss_id": 1.5}, "meta sdss_id must be a whole number, not 1.5"),
                ({"catalogid": 2**70}, "does not fit in 64 bits"),
                ({"apogee_id": 5}, "meta apogee_id must be a string, not 5"),
                ({"k_mag": "bright"}, "meta k_mag='bright' is not a number"),
                ({"is_visit": "False"}, "meta is_visit must be True or False, not 'False'"),
                ({"row": 1.7}, "meta row must be a whole number, not 1.7"),
                ({"hdu": "--5"}, "meta hdu must be a whole number, not '--5'"),
                ({"catalogid": 27021597000000001.0}, "a float cannot hold this id exactly; give integers")]
    for meta, words in mistakes:
        _refused(lambda: specq.predict((*FLAT, meta), "bossnet", **RUN), words)
    _refused(lambda: specq.predict((None, None, None), "bossnet", **RUN), "the wavelengths hold no finite number")
    # A whole float (a pandas column with gaps holds ids as floats) is the id it spells.
    one = specq.predict((*FLAT, {"sdss_id": 42.0, "catalogid": np.float32("nan")}), "bossnet", **RUN)
    assert one["sdss_id"][0] == 42 and one["catalogid"].mask[0] and one["error"][0] == ""
    # What a table's cell gives: numpy integers and flags, masked and NA values (not known), bytes.
    import pandas as pd

    cells = {"sdss_id": np.int64(27021597000000001), "catalogid": pd.NA, "spectrum_pk": np.ma.masked,
             "apogee_id": b"2M00000000+0000000 ", "is_visit": np.int16(0), "k_mag": np.ma.masked, "row": "+0"}
    two = specq.predict((*FLAT, cells), "bossnet", **RUN)
    assert two["sdss_id"][0] == 27021597000000001 and two["catalogid"].mask[0] and two["error"][0] == ""


def test_wavelengths_with_a_unit_are_taken_in_angstrom():
    from astropy import units as u

    in_angstrom = specq.predict(FLAT, "bossnet", **RUN)
    in_nm = specq.predict(((WAVELENGTH / 10) * u.nm, *FLAT[1:]), "bossnet", **RUN)
    assert in_nm["error"][0] == "" and in_nm["teff"][0] == pytest.approx(in_angstrom["teff"][0])
    _refused(lambda: specq.predict((WAVELENGTH * u.Jy, *FLAT[1:]), "bossnet", **RUN), "wavelengths in Jy")


def test_results_refuses_what_it_cannot_read(tmp_path):
    from workers.store import ResultStore

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    ResultStore(url).create()
    (tmp_path / "notes.sqlite").write_text("not a database " * 100)
    foreign = tmp_path / "foreign.sqlite"
    sqlite3.connect(foreign).execute("create table stars (x)").connection.commit()
    cases = [(dict(database_url=tmp_path / "r.sqlite"), "database_url=PosixPath.*: give a URL"),
             (dict(database_url=f"sqllite:///{tmp_path / 'r.sqlite'}"), "sqllite.*cannot use this database"),
             (dict(database_url=f"sqlite:///{tmp_path / 'notes.sqlite'}"), "file is not a database"),
             (dict(database_url=f"sqlite:///{foreign}"), "holds tables, none of them specq.s"),
             (dict(good="false", database_url=url), "good must be True or False, not 'false'"),
             (dict(published_only="no", database_url=url), "published_only must be True or False, not 'no'"),
             (dict(model=3, database_url=url), "model=3: give the start of the weights' sha256")]
    for kwargs, words in cases:
        _refused(lambda: specq.results("bossnet", **kwargs), words)
    assert sqlite3.connect(foreign).execute("select name from sqlite_master").fetchall() == [("stars",)]
    assert len(specq.results("bossnet", good=np.True_, database_url=url)) == 0
    assert len(specq.results("bossnet", good=0, database_url=url)) == 0  # 1 and 0 are Python's True and False


def test_submit_checks_its_arguments_before_sending(boss):
    import pandas as pd
    from workers.refs import SpectrumRef
    from workers.settings import load_settings

    settings = load_settings(data_root=str(boss))
    app = RecordingApp(settings)
    files = [str(boss)]
    mistakes = [(dict(chunk_size=0), "chunk_size must be at least 1, not 0"),
                (dict(chunk_size=1.5), "chunk_size must be a whole number, not 1.5"),
                (dict(chunk_size=True), "chunk_size must be a whole number, not True"),
                (dict(options={"drawz": 3}), r"unknown option\(s\) drawz"),
                (dict(options={"draws": -1}), "needs at least 0 draws, got draws=-1"),
                (dict(options={"seed": "x"}), "seed must be a whole number, not 'x'"),
                (dict(options=[("draws", 3)]), "options=.*: give a dict"),
                (dict(bulk="no"), "bulk must be True or False, not 'no'"),
                (dict(progress=3), "progress=3: give a function")]
    for kwargs, words in mistakes:
        _refused(lambda: specq.submit(files, "bossnet", settings=settings, celery_app=app, **kwargs), words)
    for items, words in [(None, "no spectra given"), (42, "cannot send a int"), ([b"boss"], "cannot send a bytes"),
                         (pd.DataFrame({"fieldid": [1]}), "cannot send a DataFrame .a target table goes with")]:
        _refused(lambda: specq.submit(items, "bossnet", settings=settings, celery_app=app), words)
    assert app.sent == []
    assert specq.submit([], "bossnet", settings=settings, celery_app=app).n_spectra == 0  # as enqueue of nothing
    # One reference alone, as a dict or a SpectrumRef, is one spectrum.
    path = next(p.relative_to(boss).as_posix() for p in boss.rglob("*.fits"))
    for ref in ({"path": path, "hdu": 1, "row": 0}, SpectrumRef(path, 1, 0)):
        sub = specq.submit(ref, "bossnet", options={"draws": "8"}, settings=settings, celery_app=app)
        assert [r.path for r in sub.refs["bossnet"]] == [path]
    assert [refs for _, refs in app.sent] == [[{"path": path, "hdu": 1, "row": 0}]] * 2
    # Options every pipeline that may get the spectra takes: draws=0 is BossNet's only (AstroNN needs 1).
    _refused(lambda: specq.submit(files, "bossnet,astronn_dist", options={"draws": 0}, settings=settings,
                                  celery_app=app), "astronn_dist needs at least 1 draws, got draws=0$")
    _refused(lambda: specq.submit(files, options={"draws": 0}, settings=settings, celery_app=app),
             r"needs at least 1 draws.*\(name the pipelines, pipelines=\.\.\., to send them to those only\)")
    assert specq.submit(files, "bossnet", options={"draws": 0}, settings=settings, celery_app=app).refs["bossnet"]


def test_submit_without_a_broker_is_one_clear_error(boss):
    from celery import Celery

    from tasks.app import configure
    from workers.settings import load_settings

    settings = load_settings(data_root=str(boss), broker_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    app = configure(Celery("specq-api-test"), settings)
    for given in (dict(settings=settings), {}):  # the app's own broker is named, settings given or not
        _refused(lambda: specq.submit([str(boss)], "bossnet", celery_app=app, **given),
                 r"submit: cannot reach the broker redis://127.0.0.1:1/0: .* those after it were not sent: "
                 r"submit it all again")


def test_results_takes_model_since_and_until_as_the_export_options_do(tmp_path):
    import datetime as dt

    from workers.store import ResultStore

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    table = specq.predict(FLAT, "bossnet", **RUN)
    row = {k: (None if v is np.ma.masked else v) for k, v in zip(table.colnames, table[0])}
    row.update(spectrum_key="<input 0>:0:0", result_flags=int(row["result_flags"]))
    ResultStore(url).write("bossnet", [row])
    sha = row["model_sha256"]
    # `specq results export --model` strips spaces and takes any case
    assert len(specq.results("bossnet", model=f" {sha[:8].upper()} ", database_url=url)) == 1
    assert len(specq.results("bossnet", model="unloaded", database_url=url)) == 0
    for model in ("zz", "", "  "):
        _refused(lambda: specq.results("bossnet", model=model, database_url=url),
                 rf"results: model='{model}' is not a sha256 or a prefix of one \(hex digits\)")
    both = r"until=2025-03-14T00:00:00\+00:00 is not after since=2025-03-15T00:00:00\+00:00"
    for since, until in (("2025-03-15", "2025-03-14"), (dt.datetime(2025, 3, 15), "2025-03-14T00:00"),
                         (dt.date(2025, 3, 15), dt.date(2025, 3, 14))):
        _refused(lambda: specq.results("bossnet", since=since, until=until, database_url=url), both)
    _refused(lambda: specq.results("bossnet", since="2025-03-15", until="2025-03-15", database_url=url),
             "is not after")


def test_write_results_writes_what_the_export_writes(tmp_path):
    from astropy.io import fits

    from workers.export import read_results

    table = specq.predict(FLAT, "bossnet", **RUN)
    table["error"] = ["flux ≤ 0 near 4000 Å"]  # FITS holds ASCII only: astropy's own writer refuses this
    path = specq.write_results(table, tmp_path / "x.fits")
    with fits.open(path) as hdus:
        assert hdus[0].header["PIPELINE"] == "BossNet" and len(hdus) > 2  # the SDSS summary-file layout
    assert list(read_results(specq.write_results(table, tmp_path / "x.csv"))["error"]) == ["flux ≤ 0 near 4000 Å"]
    _refused(lambda: specq.write_results(table, tmp_path / "x.txt"), "write_results: .*unknown output format '.txt'")
    table.meta.pop("specq_pipeline")
    _refused(lambda: specq.write_results(table, tmp_path / "y.fits"), "FITS takes one pipeline's table")
