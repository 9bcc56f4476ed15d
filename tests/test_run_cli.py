"""The whole pipelines through `specq run`, against an independent reference computation.

BossNet: chunked (non-demo) random weights, spec-lite + mwmVisit + mwmStar files →
`specq run` → the nominal values equal numpy preprocessing + the direct-convolution
network on each spectrum, as the published pipeline computes them.

AstroNN: a `.pt` of random weights, apStar + mwmStar files, a catalog with a different
magnitude per star → `specq run` → each star's distance equals astroNN's
`apogee_continuum` + plain torch MC dropout + `astroNN.gaia.fakemag_to_pc` for that star.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from astropy.table import Table

from conftest import ROOT

from workers.astronn_dist.schema import ASTRONN_DIST_SCHEMA
from workers.bossnet.schema import BOSSNET_SCHEMA
from workers.export import read_results

# `specq run` writes the columns of `specq results export` (tests/test_export.py checks them).
BOSSNET_COLUMNS = [f.output_name for f in BOSSNET_SCHEMA.output_fields()]
ASTRONN_COLUMNS = [f.output_name for f in ASTRONN_DIST_SCHEMA.output_fields()]


def _specq(*args, cwd):
    out = subprocess.run([sys.executable, "-m", "specq.cli", *map(str, args)], cwd=cwd, capture_output=True,
                         text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_bossnet_run_matches_the_reference_computation(tmp_path):
    from specq.testing import synthetic
    from workers.bossnet.network import BossNet
    from workers.bossnet.weights import demo_state_dict
    from workers.bossnet.pipeline import convert_outputs
    from workers.bossnet.preprocess import preprocess_one
    from workers.readers import read_spectrum
    from workers.weights.formats import save_chunks

    chunks = save_chunks(demo_state_dict(seed=77), tmp_path / "weights" / "model_boss")  # not marked demo
    data = tmp_path / "data"
    data.mkdir()
    synthetic.write_spec_lite(data / "spec-1-2-3.fits", teff=5200, logg=4.4, fe_h=-0.3, v_r=20, snr=30, seed=1)
    synthetic.write_spec_lite(data / "spec-1-2-4.fits", teff=7000, logg=4.0, fe_h=0.1, v_r=-5, snr=15, seed=2,
                              lowercase=True)
    synthetic.write_mwm_visit(data / "mwmVisit-0.8.1-5.fits", [
        dict(teff=4800, logg=2.5, fe_h=-1.0, snr=20, seed=3), dict(teff=4810, logg=2.5, fe_h=-1.0, snr=25, seed=4)],
        sdss_id=5, catalogid=55)
    synthetic.write_mwm_star(data / "mwmStar-0.8.1-6.fits", boss=dict(teff=6000, logg=4.2, fe_h=0.0, snr=40, seed=5),
                             apogee=dict(teff=6000, logg=4.2, fe_h=0.0, snr=40, seed=6, fakemag=50.0),
                             sdss_id=6, catalogid=66)
    _specq("run", "--pipeline", "bossnet", "--weights", chunks, "--draws", 3, "--seed", 1, "--quiet",
           "--output", tmp_path / "out.csv", *sorted(p.name for p in data.iterdir()), cwd=data)
    out = read_results(tmp_path / "out.csv")  # booleans read back as booleans
    assert out.colnames == BOSSNET_COLUMNS
    assert not any(out["demo_weights"])  # these weights are not demo weights
    assert len(out) == 5  # 2 spec-lite + 2 visits + 1 combined BOSS (the APOGEE HDU is not BossNet's)
    visits = out[out["path"] == "mwmVisit-0.8.1-5.fits"]
    assert list(visits["sdss_id"]) == [5, 5] and list(visits["catalogid"]) == [55, 55]
    assert list(out["filetype"]) == ["mwmStar", "mwmVisit", "mwmVisit", "specLite", "specLite"]
    blob = b"".join((chunks / f"model_chunk_{i}").read_bytes() for i in range(10))
    assert set(out["model_sha256"]) == {hashlib.sha256(blob).hexdigest()}

    model = BossNet(conv_impl="direct")
    model.load_state_dict(demo_state_dict(seed=77))
    model.eval()
    for row in out:
        s = read_spectrum(data / row["path"], int(row["hdu"]), int(row["row"]), backend="astropy")
        x, _, _ = preprocess_one(s.wavelength, s.flux, s.ivar)
        with torch.inference_mode():
            y = model(torch.as_tensor(x, dtype=torch.float32)[None, None]).numpy()
        ref = convert_outputs(y, np.zeros((1, 2, 4), dtype=np.float32))
        for name in ("teff", "logg", "fe_h", "bn_v_r"):
            assert row[name] == pytest.approx(float(ref[name][0]), rel=1e-4, abs=1e-4), (row["path"], name)
        assert np.isfinite(row["e_teff"]) and row["e_teff"] >= 0


def test_astronn_run_gives_each_star_its_reference_distance(tmp_path):
    from astroNN.apogee import apogee_continuum
    from astroNN.gaia import fakemag_to_pc

    from specq.testing import synthetic
    from workers.astronn_dist.network import ApogeeDistBCNN, demo_state_dict
    from workers.readers import read_spectrum
    from workers.weights.formats import save_pt

    sd = demo_state_dict(seed=99)
    weights = save_pt({"model_state_dict": sd}, tmp_path / "astronn_dist.pt")
    data = tmp_path / "data"
    data.mkdir()
    stars = {"2M00000001+0000001": 7.1, "2M00000002+0000002": 9.4, "2M00000003+0000003": 12.2}
    ebv = {"2M00000001+0000001": 0.02, "2M00000002+0000002": 0.30, "2M00000003+0000003": 0.11}
    synthetic.write_apstar(data / "apStar-dr17-apo25m-2M00000001+0000001.fits", teff=4700, logg=2.4, fe_h=-0.2,
                           fakemag=60, snr=80, seed=1, apogee_id="2M00000001+0000001")
    synthetic.write_apstar(data / "apStar-dr17-apo25m-2M00000002+0000002.fits", teff=5100, logg=3.4, fe_h=0.1,
                           fakemag=30, snr=60, seed=2, nvisits=3, apogee_id="2M00000002+0000002")
    synthetic.write_mwm_star(data / "mwmStar-0.8.1-3.fits",
                             apogee=dict(teff=4500, logg=2.0, fe_h=-0.5, snr=70, seed=3, fakemag=90.0),
                             sdss_id=3, catalogid=33, apogee_id="2M00000003+0000003")
    catalog = Table({"apogee_id": list(stars), "k_mag": list(stars.values()), "ebv": [ebv[k] for k in stars]})
    catalog.write(tmp_path / "catalog.csv")
    passes = 400
    run = _specq("run", "--pipeline", "astronn_dist", "--weights", weights, "--catalog", tmp_path / "catalog.csv",
                 "--draws", passes, "--seed", 3, "--quiet", "--output", tmp_path / "out.fits",
                 *sorted(p.name for p in data.iterdir()), cwd=data)
    # Nothing of TensorFlow on stderr: the distances are computed without loading it.
    assert "astronn_dist: 3 spectra" in run.stdout
    assert not [ln for ln in run.stderr.splitlines() if "absl" in ln or ".cc:" in ln or "tensorflow" in ln.lower()], \
        run.stderr
    out = Table.read(tmp_path / "out.fits", hdu="APOGEE")  # the summary-file layout: APOGEE rows in HDU 2
    # Every column of the export, the Gaia ones too (NaN: no Gaia parallax given).
    assert out.colnames == ASTRONN_COLUMNS and len(out) == 3
    assert np.isfinite(out["nn_parallax"]).all() and np.isnan(np.ma.filled(out["gdr3_parallax_w_zp"], np.nan)).all()
    assert len(Table.read(tmp_path / "out.fits", hdu="BOSS")) == 0

    model = ApogeeDistBCNN()
    model.load_state_dict(sd)
    model.train()  # plain torch dropout: the published way of MC dropout
    labels_std = float(sd["labels_std"][0])
    torch.manual_seed(0)
    for row in out:
        s = read_spectrum(data / row["path"], int(row["hdu"]), int(row["row"]), backend="astropy")
        star = s.ids["apogee_id"]
        assert row["obj"] == star
        norm, _ = apogee_continuum(s.flux, s.error, bitmask=s.bitmask, dr=17)
        x = model.standardize(np.atleast_2d(norm)).repeat(4000, 1)
        with torch.no_grad():
            pred, logvar = model(x)
        pred, logvar = pred.double().numpy(), logvar.double().numpy()
        L = pred.mean() * labels_std
        e_L = np.sqrt(np.exp(logvar.mean()) + pred.var(ddof=1)) * labels_std
        k_corr = stars[star] - 0.3517 * ebv[star]
        dist, e_dist = fakemag_to_pc(L, k_corr, e_L)
        tol = 5 * pred.std() * labels_std / np.sqrt(passes) + 5 * pred.std() * labels_std / np.sqrt(4000)
        assert row["k_mag"] == pytest.approx(stars[star]) and row["ebv"] == pytest.approx(ebv[star])
        assert row["L_fakemag"] == pytest.approx(L, abs=tol), star
        assert row["nn_dist"] == pytest.approx(float(np.asarray(dist.value if hasattr(dist, "value") else dist)),
                                               rel=tol / L * 1.5), star
        assert row["L_fakemag_err"] == pytest.approx(e_L, rel=0.15), star
        assert row["result_flags"] == 0
