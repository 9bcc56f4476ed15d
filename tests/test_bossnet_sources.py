"""BossNet on every source its authors cover: readers, parity with the authors' code, the Monte Carlo rules.

The parity vectors (``data/bossnet_sources.json``) were computed once with the authors' code
from the seeded weights of :func:`bossnet_sources.parity_state_dict`; see
``data/make_bossnet_source_vectors.py``.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from bossnet_sources import inputs, parity_state_dict, vectors
from workers import readers, registry
from workers.bossnet.sources import SOURCES
from workers.spectrum import Spectrum

import torch

# data source → (pipeline, model)
CASES = {"boss": ("bossnet", "boss"), "apogee": ("bossnet_apogee", "apogee"),
         "lamost_dr7": ("bossnet_lamost", "boss"), "lamost_dr8": ("bossnet_lamost", "boss"),
         "gaia_rvs": ("bossnet_gaia_rvs", "gaia_rvs"), "gaia_xp": ("bossnet_gaia_xp", "gaia_xp")}
COLUMN = {"logg": "logg", "FeH": "fe_h", "rv": "bn_v_r"}


def _write_lamost(folder, data, release: int) -> list:
    from astropy.io import fits

    paths = []
    for i in range(2):
        w, f, iv = (data[f"lamost/{k}{i}"] for k in ("wavelength", "flux", "ivar"))
        path = folder / f"spec-5585{i}-F5902_sp01-00{i}.fits"
        if release == 7:
            fits.PrimaryHDU(np.stack([f, iv, w, 0 * f, 0 * f])).writeto(path)
        else:
            cols = [fits.Column(name=k, format=f"{len(v)}E", array=v[None, :])
                    for k, v in (("FLUX", f), ("IVAR", iv), ("WAVELENGTH", w))]
            fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(path)
        paths.append(path)
    return paths


def _write_gaia(folder, data, source: str, suffix: str = ".ecsv"):
    from astropy.table import Table

    prefix = f"{source}/"
    table = Table({k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)})
    path = folder / f"{'RVS' if source == 'gaia_rvs' else 'XP_CONTINUOUS'}-test{suffix}"
    if suffix.endswith(".gz"):
        import gzip
        import io

        buf = io.StringIO()
        table.write(buf, format="ascii.ecsv")
        path.write_bytes(gzip.compress(buf.getvalue().encode()))
    elif suffix == ".fits":
        table.write(path, format="fits")
    else:
        table.write(path, format="parquet" if suffix == ".parquet" else "ascii.ecsv")
    return path


def _spectra(source: str, data, folder) -> list[Spectrum]:
    """The stored inputs as the pipeline gets them: through specq's readers where a file format exists."""
    if source == "boss":
        wl = 10.0 ** data["boss/loglam"].astype(np.float64)
        return [Spectrum(path=f"boss{i}", hdu=1, row=0, instrument="boss", wavelength=wl,
                         flux=data["boss/flux"][i], ivar=data["boss/ivar"][i]) for i in range(2)]
    if source == "apogee":
        from specq.testing.synthetic import apogee_wavelength

        return [Spectrum(path=f"apogee{i}", hdu=1, row=0, instrument="apogee", wavelength=apogee_wavelength(),
                         flux=data["apogee/flux"][i], error=data["apogee/error"][i]) for i in range(2)]
    if source.startswith("lamost"):
        paths = _write_lamost(folder, data, 7 if source == "lamost_dr7" else 8)
    else:
        paths = [_write_gaia(folder, data, source)]
    out = []
    for path in paths:
        for slot in readers.list_spectra(path, registry.get(CASES[source][0]).instrument):
            out.append(readers.read_spectrum(path, slot.hdu, slot.row))
    return out


@pytest.fixture(scope="module")
def parity_weights(tmp_path_factory):
    """Each model's parity weights (up to hundreds of MB), written once for the module's
    tests on first use: the pipelines built from them only read them."""
    from workers.weights.formats import save_chunks

    folder = tmp_path_factory.mktemp("parity-weights")
    saved = {}

    def weights(model: str):
        if model not in saved:
            saved[model] = save_chunks(parity_state_dict(model), folder / f"weights-{model}")
        return saved[model]

    return weights


def _pipeline(source: str, parity_weights, draws: int = 0, seed=None):
    name, model = CASES[source]
    return registry.get(name).load_class()(weights=parity_weights(model), device="cpu", draws=draws, seed=seed)


def _normalized(row: dict, model: str) -> list[float]:
    out = []
    for label in SOURCES[model].labels:
        value = math.log10(row["teff"]) if label.name == "logTeff" else row[COLUMN[label.name]]
        out.append((value - label.mean) / label.std)
    return out


@pytest.mark.parametrize("source", list(CASES))
def test_nominal_outputs_match_the_authors_code(source, tmp_path, parity_weights):
    data, expected = inputs(), vectors()[source]
    spectra = _spectra(source, data, tmp_path)
    assert len(spectra) == 2
    pipe = _pipeline(source, parity_weights)
    rows = pipe.predict(spectra)
    model = CASES[source][1]
    assert expected["labels"] == list(SOURCES[model].label_names)
    for row, want in zip(rows, expected["outputs"]):
        assert not row.get("error"), row.get("error")
        got = _normalized(row, model)
        want = [(v - lab.mean) / lab.std for v, lab in zip(want, SOURCES[model].labels)]
        for g, w, label in zip(got, want, SOURCES[model].label_names):
            assert abs(g - w) <= 5e-4 * max(1.0, abs(w)), (source, label, g, w)
    # The two spectra differ by far more than the tolerance: the test can tell them apart.
    a, b = (np.array([(v - lab.mean) / lab.std for v, lab in zip(o, SOURCES[model].labels)])
            for o in expected["outputs"])
    assert np.abs(a - b).max() > 1e-2


@pytest.mark.parametrize("source", ["apogee", "gaia_rvs", "gaia_xp"])
def test_draws_are_seeded_per_spectrum_and_independent_of_the_batch(source, tmp_path, parity_weights):
    spectra = _spectra(source, inputs(), tmp_path)
    pipe = _pipeline(source, parity_weights, draws=6, seed=3)
    both = pipe.predict(spectra)
    alone = pipe.predict(spectra[1:])
    again = pipe.predict(spectra)
    stds = {COLUMN.get(lab.name, "teff"): lab.std for lab in SOURCES[CASES[source][1]].labels}
    for label in ("teff", "logg", "fe_h"):
        # Another batch size takes other float32 kernels: each draw moves at the network's
        # rounding, so a label and its uncertainty (a spread of draws) are compared at the
        # label's scale (its value or its normalisation, STD), not at their own.
        scale = 1e-5 * max(abs(both[1][label]), stds.get(label, 1.0))
        for field in (label, f"e_{label}"):
            assert both[1][field] == pytest.approx(alone[0][field], abs=scale), field
            assert both[0][field] == again[0][field]
    assert all(r["e_logg"] > 0 and np.isfinite(r["e_teff"]) for r in both)
    other = _pipeline(source, parity_weights, draws=6, seed=4).predict(spectra)
    assert other[0]["e_logg"] != both[0]["e_logg"]


def test_rvs_prepares_ahead_on_a_cpu_and_its_rows_do_not_change(tmp_path, parity_weights):
    """Gaia RVS's engine prepares the next batch while the network runs (its small network
    leaves the cores gaps); the rows are those of preparing each batch in turn."""
    from workers import engine
    from workers.refs import SpectrumRef

    spectra = _spectra("gaia_rvs", inputs(), tmp_path)
    pipe = _pipeline("gaia_rvs", parity_weights, draws=4, seed=2)
    assert pipe.prepares_ahead and not _pipeline("gaia_xp", parity_weights).prepares_ahead
    refs = [SpectrumRef(os.path.relpath(s.path, tmp_path), s.hdu, s.row) for s in spectra] * 3  # several batches
    ahead = engine.process(pipe, refs, tmp_path, batch_size=2)
    in_turn = engine.process(pipe, refs, tmp_path, batch_size=2, prepare_ahead=False)
    assert len(ahead) == len(refs) and not any(r.get("error") for r in ahead)
    assert [r["teff"] for r in ahead] == [r["teff"] for r in in_turn]
    assert [r["e_logg"] for r in ahead] == [r["e_logg"] for r in in_turn]


def test_xp_noise_follows_each_bands_covariance():
    from workers.bossnet_gaia_xp.pipeline import covariance

    data = inputs()
    err = data["gaia_xp/bp_coefficient_errors"][0]
    corr = data["gaia_xp/bp_coefficient_correlations"][0]
    cov = covariance(err, corr)
    assert np.allclose(np.diag(cov), err.astype(np.float32) ** 2)
    assert cov[1, 0] == pytest.approx(corr[0] * err[1] * err[0], rel=1e-5)  # (1,0) is the first correlation
    assert cov[2, 1] == pytest.approx(corr[2] * err[2] * err[1], rel=1e-5)  # then (2,0), (2,1)
    assert np.array_equal(cov, cov.T)
    factor = np.linalg.cholesky(cov.astype(np.float64))
    z = np.random.default_rng(0).standard_normal((len(err), 40000))
    sample = factor @ z
    assert np.allclose(np.cov(sample), cov, atol=0.05 * np.abs(cov).max())


@pytest.mark.parametrize("suffix", [".ecsv", ".ecsv.gz", ".fits", ".parquet"])
@pytest.mark.parametrize("source", ["gaia_rvs", "gaia_xp"])
def test_gaia_tables_give_one_spectrum_per_source_id(source, suffix, tmp_path):
    data = inputs()
    path = _write_gaia(tmp_path, data, source, suffix)
    kind = "gaiaRVS" if source == "gaia_rvs" else "gaiaXP"
    assert readers.detect_format(path) == kind
    slots = readers.list_spectra(path, source)
    ids = [int(i) for i in data[f"{source}/source_id"]]
    assert [s.ids["gaia_dr3_source_id"] for s in slots] == ids
    assert [(s.hdu, s.row) for s in slots] == [(1, 0), (1, 1)]
    for other in ("boss", "apogee", "lamost", "gaia_xp" if source == "gaia_rvs" else "gaia_rvs"):
        assert readers.list_spectra(path, other) == []
    spectrum = readers.read_spectrum(path, 1, 1)
    assert spectrum.instrument == source and spectrum.ids["gaia_dr3_source_id"] == ids[1]
    first = "flux" if source == "gaia_rvs" else "bp_coefficients"
    np.testing.assert_allclose(spectrum.flux[:5], data[f"{source}/{first}"][1][:5].astype(np.float32), equal_nan=True)


@pytest.mark.parametrize("suffix", [".ecsv", ".fits"])
def test_a_gaia_row_without_a_usable_source_id_is_its_own_flagged_row(suffix, tmp_path):
    """A NaN or a fraction in source_id flags that row; the table's other rows are read."""
    from astropy.table import Table

    from specq.testing.surveys import write_gaia_table
    from workers import engine
    from workers.refs import SpectrumRef

    table = Table.read(write_gaia_table(tmp_path / "whole.ecsv", "rvs", 3))
    good = int(table["source_id"][2])
    table["source_id"] = np.array([np.nan, 1.5, good], dtype=np.float64)  # exact: the id is below 2**53
    path = tmp_path / f"RVS-ids{suffix}"
    table.write(path, format="ascii.ecsv" if suffix == ".ecsv" else "fits")
    slots = readers.list_spectra(path, "gaia_rvs")
    assert [s.ids for s in slots] == [{}, {}, {"gaia_dr3_source_id": good}]
    jobs = [job for s in slots for job in engine.read_jobs(SpectrumRef(path.name, s.hdu, s.row), tmp_path, "gaia_rvs")]
    assert [job.error for job in jobs[:2]] == [
        f"{path}, HDU 1 row {row}: source_id {shown} is not a Gaia DR3 source_id (a positive 64-bit integer)"
        for row, shown in ((0, "nan"), (1, "1.5"))]
    assert jobs[2].error is None and jobs[2].spectrum.ids == {"gaia_dr3_source_id": good}


def test_a_source_id_is_read_exactly_or_not_at_all():
    from workers.readers.gaia import _source_id

    big = 4295806720000000000  # a DR3 id: beyond 2**53, where floats skip integers
    assert [_source_id(v) for v in (np.int64(big), np.array([big]), str(big), b"12", 12.0)] == [big, big, big, 12, 12]
    assert [_source_id(v) for v in (float(big), np.nan, 1.5, -3, 0, 2**63, True, "x", np.ma.masked)] == [None] * 9


@pytest.mark.parametrize("release", [7, 8])
def test_lamost_is_told_apart_from_boss_by_structure(release, tmp_path):
    from specq.testing.surveys import write_lamost_dr7, write_lamost_dr8
    from specq.testing.synthetic import write_spec_lite

    writer = write_lamost_dr7 if release == 7 else write_lamost_dr8
    path = writer(tmp_path / "spec-57278-EG000023N024031B01_sp02-153.fits", teff=5000, logg=3.0, fe_h=-0.5)
    assert readers.detect_format(path) == f"lamostDR{release}"
    assert readers.list_spectra(path, "boss") == []
    (slot,) = readers.list_spectra(path, "lamost")
    spectrum = readers.read_spectrum(path, slot.hdu, slot.row)
    assert spectrum.instrument == "lamost" and len(spectrum.flux) == len(spectrum.ivar) == len(spectrum.wavelength)
    boss = tmp_path / "spec-015000-59146-4593082500.fits"
    write_spec_lite(boss, teff=5800, logg=4.4, fe_h=0.0, v_r=0.0, snr=30, seed=1)
    assert readers.detect_format(boss) == "spec-lite"
    assert readers.list_spectra(boss, "lamost") == []
    # A LAMOST file under a BOSS name is refused, not read as either.
    renamed = tmp_path / "spec-015000-59146-1.fits"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(readers.FormatMismatchError):
        readers.detect_format(renamed)


def test_apogee_spectra_of_another_length_become_failed_rows(tmp_path, parity_weights):
    data = inputs()
    spectra = _spectra("apogee", data, tmp_path)
    short = Spectrum(path="short", hdu=1, row=0, instrument="apogee", wavelength=np.arange(100.0),
                     flux=np.ones(100, np.float32), error=np.ones(100, np.float32))
    pipe = _pipeline("apogee", parity_weights)
    rows = pipe.predict([spectra[0], short])
    assert not rows[0].get("error") and "8575 pixels" in rows[1]["error"]
    assert rows[1]["result_flags"] & 1


def test_gaia_xp_without_a_band_becomes_a_failed_row(tmp_path, parity_weights):
    """All of BP missing (NaN) is no spectrum to answer for; a NaN here and there is read as the authors read it."""
    data = inputs()
    good, other = _spectra("gaia_xp", data, tmp_path)[:2]
    no_bp = Spectrum(**{**good.__dict__, "path": "no_bp", "flux": good.flux.copy()})
    no_bp.flux[:55] = np.nan
    one_nan = Spectrum(**{**other.__dict__, "path": "one_nan", "flux": other.flux.copy()})
    one_nan.flux[3] = np.nan
    rows = _pipeline("gaia_xp", parity_weights).predict([good, no_bp, one_nan])
    assert not rows[0].get("error") and not rows[2].get("error")
    assert rows[1]["error"] == "no BP coefficients (none of the 55 is a number)" and rows[1]["result_flags"] & 1
