"""specq from Python: predict, results and submit return the exported tables; one error type."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from astropy.io import fits

import specq
from conftest import ROOT
from specq.testing.synthetic import make_dataset
from workers.export import results_table
from workers.readers import read_spectrum
from workers.registry import schemas

RUN = dict(demo_weights=True, draws=4, seed=7)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    truth = make_dataset(root, n_boss=3, n_apogee=2, seed=9, formats=("spec-lite", "mwmStar", "mwmVisit"))
    return root, truth


def _floats_equal(a, b, skip=()):
    """The same numbers: the same inputs give the same outputs, up to float32 rounding where
    the network's batched forward sums in another order (a file's spectra are batched with
    each other, in-memory ones in batches of their own)."""
    names = [c for c in a.colnames if a[c].dtype.kind == "f" and c not in skip]
    assert names
    for c in names:
        np.testing.assert_allclose(np.asarray(b[c]), np.asarray(a[c]), rtol=2e-6, atol=1e-6, equal_nan=True, err_msg=c)


def test_importing_specq_stays_light():
    code = ("import sys, specq; specq.predict; specq.results; specq.submit; specq.SpecqError; "
            "print(','.join(m for m in ('torch', 'astropy', 'numpy', 'celery', 'sqlalchemy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


def test_predict_from_paths_and_folders_gives_the_exported_columns(data):
    root, truth = data
    boss = specq.predict(root / "boss", "bossnet", **RUN)
    schema = schemas()["bossnet"]
    empty = results_table(schema, [])
    assert boss.colnames == empty.colnames
    for name in boss.colnames:
        assert boss[name].description == empty[name].description and boss[name].unit == empty[name].unit, name
    assert len(boss) == sum(1 for r in truth if r["format"] == "spec-lite")
    assert (boss["teff"] > 0).all() and (boss["error"] == "").all() and boss.meta["DEMO"]
    # Two pipelines named: one table, a pipeline column first, each spectrum to the one that takes it.
    paths = [root / p for p in sorted(set(truth["path"]))]
    both = specq.predict(paths, "bossnet,astronn_dist", **RUN)
    assert both.colnames[0] == "pipeline" and set(both["pipeline"]) == {"bossnet", "astronn_dist"}
    assert len(both) == len(truth)
    # None: every pipeline that takes a spectrum, as `specq run` picks them (BossNet on APOGEE
    # takes the APOGEE coadds AstroNN takes).
    every = specq.predict(paths, **RUN)
    assert set(every["pipeline"]) == {"bossnet", "astronn_dist", "bossnet_apogee"}
    assert (every["pipeline"] == "bossnet_apogee").sum() == (every["pipeline"] == "astronn_dist").sum() > 0


def test_a_specutils_spectrum_gives_the_numbers_of_its_file(data):
    from specutils import SpectrumList

    root, truth = data
    for path in sorted(set(truth["path"])):
        file = root / path
        fmt = "SDSS-V spec" if path.startswith("boss/") else "SDSS-V mwm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # specutils' own unit and header notes
            spectra = SpectrumList.read(file, format=fmt)
        # specutils gives one Spectrum per row of the file's tables, in order.
        with fits.open(file) as hdul:
            places = [(i, row) for i in range(1, len(hdul)) if hdul[i].name != "SPALL"
                      for row in range(hdul[i].header["NAXIS2"] if fmt == "SDSS-V mwm" else 1)]
        assert len(places) == len(spectra), path
        for spectrum, (hdu, row) in zip(spectra, places):
            # The name a seed's draws depend on, as the file gives it to its spectra.
            spectrum.meta.update(path=str(file), hdu=hdu, row=row)
        from_file = specq.predict(file, **RUN)
        from_specutils = specq.predict(spectra, **RUN)
        assert len(from_file) == len(from_specutils) > 0, path
        _floats_equal(from_file, from_specutils, skip=("snr", "ra", "dec"))  # header extras specutils drops


def test_arrays_with_their_metadata_give_the_numbers_of_the_file(data):
    root, truth = data
    star = next(r for r in truth if r["format"] == "mwmStar" and r["instrument"] == "apogee")
    file = root / star["path"]
    read = read_spectrum(file, int(star["hdu"]), int(star["row"]))
    meta = {"path": str(file), "hdu": read.hdu, "row": read.row, "is_visit": False, "bitmask": read.bitmask,
            "k_mag": read.meta["k_mag"], "ebv": read.meta["ebv"], **read.ids}
    arrays = specq.predict((read.wavelength, read.flux, read.ivar, meta), "astronn_dist", **RUN)
    from_file = specq.predict(file, "astronn_dist", **RUN)
    _floats_equal(from_file, arrays, skip=("snr", "ra", "dec", "plx"))
    assert np.isfinite(arrays["nn_dist"][0]) and arrays["k_mag"][0] == pytest.approx(read.meta["k_mag"])


def test_mistakes_are_one_clear_error(data, tmp_path):
    root, truth = data
    cases = [(lambda: specq.predict(root, "nonet", **RUN), "unknown pipeline"),
             (lambda: specq.predict(tmp_path / "missing.fits", **RUN), "missing.fits"),
             (lambda: specq.predict((np.arange(3.0), np.ones(2)), **RUN), "wavelength, flux, ivar"),
             (lambda: specq.predict((np.linspace(4000, 9000, 10), np.ones(9), np.ones(10)), **RUN),
              "one value per pixel"),
             (lambda: specq.predict(42, **RUN), "cannot predict from a int"),
             (lambda: specq.predict((np.linspace(15200, 16900, 50), np.ones(50), np.ones(50)), "bossnet", **RUN),
              "APOGEE spectrum"),
             (lambda: specq.predict(root / "boss", "bossnet", draws=-1, demo_weights=True), "draws"),
             (lambda: specq.predict((np.linspace(4000, 9000, 10), np.array(["a"] * 10), np.ones(10)), **RUN),
              "must be numbers"),
             (lambda: specq.predict((np.linspace(4000, 9000, 10), np.ones(10), np.ones(10), [1, 2]), **RUN),
              "meta must be a mapping"),
             (lambda: specq.predict((np.linspace(4000, 9000, 10), np.ones(10), np.ones(10), {"row": -5}), **RUN),
              "from 0 to 2147483647, not 0 and -5"),
             (lambda: specq.predict((np.linspace(4000, 9000, 10), np.ones(10), np.ones(10), {"hdu": 2**31}), **RUN),
              "from 0 to 2147483647"),
             (lambda: specq.predict((np.linspace(4000, 9000, 10), np.ones(10), np.ones(10),
                                     {"bitmask": np.array(["x"] * 10)}), **RUN), "bitmask must hold whole numbers"),
             (lambda: specq.predict(root / "boss", "bossnet", device="cuda:99", **RUN), "device cuda:99"),
             (lambda: specq.results("nonet"), "unknown pipeline"),
             (lambda: specq.results("bossnet", since="yesterday"), "since='yesterday' is not an ISO date"),
             (lambda: specq.results("bossnet", database_url=f"sqlite:///{tmp_path / 'none.sqlite'}"),
              "no result database at"),
             (lambda: specq.results("bossnet", database_url=f"sqlite+pysqlite:///{tmp_path / 'none.sqlite'}"),
              "no result database at"),
             (lambda: specq.submit([str(tmp_path / "missing.fits")], "bossnet"), "missing.fits")]
    for call, words in cases:
        with pytest.raises(specq.SpecqError, match=words):
            call()
    assert issubclass(specq.SpecqError, ValueError)
    assert not (tmp_path / "none.sqlite").exists(), "asking for results makes no empty store"


def test_results_from_a_missing_default_store_names_the_demo_results(tmp_path, monkeypatch):
    from workers.store import ResultStore

    for key in [k for k in os.environ if k.startswith("SPECQ_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SPECQ_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("SPECQ_CONFIG", os.devnull)
    demo_store = tmp_path / "demo" / "results.sqlite"
    demo_store.parent.mkdir()
    ResultStore(f"sqlite:///{demo_store}").create()
    with pytest.raises(specq.SpecqError, match="no result database at") as refused:
        specq.results("bossnet")
    assert str(refused.value).endswith(f"the demo's results are in {demo_store} (database_url='sqlite:///{demo_store}')")
    assert len(specq.results("bossnet", database_url=f"sqlite:///{demo_store}")) == 0


def test_results_reads_the_store_with_its_filters(data, tmp_path):
    from workers.store import ResultStore

    root, truth = data
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    table = specq.predict(root / "boss", "bossnet", **RUN)
    rows = [dict(zip(table.colnames, (None if v is np.ma.masked else v for v in row))) for row in table]
    for r in rows:
        r.update(spectrum_key=f"{r['path']}:{r['hdu']}:{r['row']}", result_flags=int(r["result_flags"]))
    rows[0].update(flag_bad=True)
    ResultStore(url).write("bossnet", rows)
    back = specq.results("bossnet", database_url=url)
    assert back.colnames == table.colnames and len(back) == len(table)
    assert list(back["teff"]) == pytest.approx(list(table["teff"]))
    assert len(specq.results("bossnet", good=True, database_url=url)) == len(table) - 1
    # As the docs write it: an ISO date; a date; a datetime
    assert len(specq.results("bossnet", since="2000-01-01", good=True, database_url=url)) == len(table) - 1
    assert len(specq.results("bossnet", until=dt.date(2000, 1, 1), database_url=url)) == 0
    assert len(specq.results("bossnet", until=dt.datetime(2999, 1, 1, 12), database_url=url)) == len(table)
    assert len(specq.results("bossnet", good=False, database_url=url)) == 1
    assert "spectrum_key" in specq.results("bossnet", all_columns=True, database_url=url).colnames
