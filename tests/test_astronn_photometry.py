"""AstroNN distances: photometry sources, missing-value rules, source catalog, schema."""
from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.table import Table

from workers.astronn_dist.photometry import (
    GDR3_ZEROPOINT_MEDIAN,
    SourceCatalog,
    clean_photometry,
    corrected_parallax,
    ebv_missing,
    k_mag_missing,
    star_photometry,
)
from workers.astronn_dist.schema import ASTRONN_DIST_SCHEMA
from workers.spectrum import Spectrum


def make_spectrum(ids=None, meta=None) -> Spectrum:
    return Spectrum(path="apStar-x.fits", hdu=1, row=0, instrument="apogee",
                    wavelength=np.zeros(3), flux=np.ones(3, np.float32),
                    ids=dict(ids or {}), meta=dict(meta or {}))


# -- rules -----------------------------------------------------------------------------

@pytest.mark.parametrize("k, missing", [
    (None, True), (math.nan, True), (math.inf, True), (98.0, True), (99.999, True),
    (-1.0, True), (-3.0, True), (-0.99, False), (0.0, False), (12.3, False), (97.9, False)])
def test_k_mag_rule(k, missing):
    assert bool(k_mag_missing(np.nan if k is None else k)) is missing
    out = clean_photometry([k], [0.1])
    assert bool(out["missing_k_mag"][0]) is missing
    assert out["k_mag"][0] == (0.0 if missing else k)


@pytest.mark.parametrize("e, missing", [
    (None, True), (math.nan, True), (-math.inf, True), (98.0, True), (0.0, True),
    (-0.1, True), (1e-4, False), (0.5, False), (97.0, False)])
def test_ebv_rule(e, missing):
    assert bool(ebv_missing(np.nan if e is None else e)) is missing
    out = clean_photometry([10.0], [e])
    assert bool(out["missing_ebv"][0]) is missing
    assert out["ebv"][0] == (0.0 if missing else e)
    assert out["a_k_mag"][0] == pytest.approx(0.3517 * out["ebv"][0])


def test_corrected_parallax():
    out = corrected_parallax([1.0, 0.02, np.nan, 2.0, 1.0], [0.1, 0.1, 0.1, 0.0, 0.2],
                             [np.nan, np.nan, 0, 0, -0.02])
    assert out["gdr3_parallax_w_zp"][0] == pytest.approx(1.0 - GDR3_ZEROPOINT_MEDIAN)
    assert out["gdr3_zeropoint"][0] == GDR3_ZEROPOINT_MEDIAN
    assert out["gdr3_parallax_w_zp"][1] == pytest.approx(0.02 + 0.03464)  # still positive
    assert np.isnan(out["gdr3_parallax_w_zp"][2])  # no parallax
    assert np.isnan(out["gdr3_parallax_w_zp"][3])  # error not positive
    assert out["gdr3_parallax_w_zp"][4] == pytest.approx(1.02) and out["gdr3_zeropoint"][4] == -0.02
    neg = corrected_parallax([-0.5], [0.1])
    assert all(np.isnan(v[0]) for v in neg.values())  # negative after correction → NaN


# -- sources ---------------------------------------------------------------------------

class _Catalog(SourceCatalog):
    """An in-memory catalog with one row for sdss_id 7."""

    def __init__(self, **values):
        super().__init__({k: np.array([v], float) for k, v in values.items()},
                         {"sdss_id": np.array([7])}, source="memory")


def test_reference_wins_over_catalog_and_header():
    s = make_spectrum({"sdss_id": 7}, {"k_mag": 11.0, "ref_photometry": {"k_mag": 9.5, "ebv": 0.2}})
    p = star_photometry(s, _Catalog(k_mag=10.0, ebv=0.3, plx=1.0, e_plx=0.1))
    assert (p.k_mag, p.ebv) == (9.5, 0.2)
    assert not p.missing_k_mag and not p.missing_ebv
    assert p.sources == {"k_mag": "ref", "ebv": "ref", "plx": "catalog"}
    assert (p.plx, p.e_plx) == (1.0, 0.1)
    assert p.a_k_mag == pytest.approx(0.3517 * 0.2)


def test_catalog_then_header():
    s = make_spectrum({"sdss_id": 7}, {"k_mag": 11.0})
    p = star_photometry(s, _Catalog(k_mag=10.0, ebv=0.3))
    assert (p.k_mag, p.ebv, p.sources["k_mag"]) == (10.0, 0.3, "catalog")
    p = star_photometry(make_spectrum({"sdss_id": 8}, {"k_mag": 11.0}), _Catalog(k_mag=10.0, ebv=0.3))
    assert (p.k_mag, p.sources["k_mag"]) == (11.0, "header")
    assert p.missing_ebv and p.ebv == 0.0 and p.sources["ebv"] is None  # the header has no ebv


def test_unusable_value_falls_through():
    s = make_spectrum({"sdss_id": 7}, {"k_mag": 11.0, "ref_photometry": {"k_mag": 99.0, "ebv": None}})
    p = star_photometry(s, _Catalog(k_mag=np.nan, ebv=0.05))
    assert (p.k_mag, p.sources["k_mag"]) == (11.0, "header")
    assert (p.ebv, p.sources["ebv"]) == (0.05, "catalog")


def test_nothing_found_is_missing():
    p = star_photometry(make_spectrum(), None)
    assert p.missing_k_mag and p.missing_ebv and (p.k_mag, p.ebv) == (0.0, 0.0)
    assert math.isnan(p.plx) and p.sources == {"k_mag": None, "ebv": None, "plx": None}
    p = star_photometry(make_spectrum(meta={"k_mag": -9999.0}), None)  # header sentinel
    assert p.missing_k_mag and p.k_mag == 0.0


# -- the catalog file ------------------------------------------------------------------

ROWS = {"sdss_id": [101, 102, 103], "catalogid": [27021598000000001, 27021598000000002, 27021598000000003],
        "apogee_id": ["2M00000001+0000001", "2M00000002+0000002", "2M00000003+0000003"]}


def _write(tmp_path, fmt, key, upper):
    table = Table()
    name = (lambda c: c.upper()) if upper else (lambda c: c)
    table[name(key)] = ROWS[key]
    table[name("k_mag")] = [9.1, 9.2, 9.3]
    table[name("ebv")] = [0.11, 0.12, 0.13]
    table[name("plx")] = [1.1, 1.2, 1.3]
    table[name("e_plx")] = [0.01, 0.02, 0.03]
    path = tmp_path / f"catalog.{fmt}"
    table.write(path, format={"csv": "ascii.csv", "fits": "fits", "parquet": "parquet"}[fmt])
    return path


@pytest.mark.parametrize("fmt", ["csv", "fits", "parquet"])
@pytest.mark.parametrize("key", ["sdss_id", "catalogid", "apogee_id"])
def test_catalog_lookup_by_each_key_and_format(tmp_path, fmt, key):
    catalog = SourceCatalog.from_file(_write(tmp_path, fmt, key, upper=(key != "catalogid")))
    assert catalog.key_columns == [key] and len(catalog) == 3
    row = catalog.lookup({key: ROWS[key][1]})
    assert row == pytest.approx({"k_mag": 9.2, "ebv": 0.12, "plx": 1.2, "e_plx": 0.02})
    assert catalog.lookup({key: ROWS[key][0] if key == "apogee_id" else 999}) != row
    p = star_photometry(make_spectrum({key: ROWS[key][2]}), catalog)
    assert (p.k_mag, p.ebv, p.plx, p.e_plx) == pytest.approx((9.3, 0.13, 1.3, 0.03))
    assert p.sources == {"k_mag": "catalog", "ebv": "catalog", "plx": "catalog"}


def test_catalog_key_order_and_coercion(tmp_path):
    table = Table({"SDSS_ID": [1, 2], "CAT_ID": [20, 10], "K_MAG": [8.0, 9.0], "EBV": [0.1, 0.2]})
    path = tmp_path / "c.csv"
    table.write(path, format="ascii.csv")
    catalog = SourceCatalog.from_file(path)
    assert catalog.key_columns == ["sdss_id", "catalogid"]
    assert catalog.lookup({"sdss_id": "2"})["k_mag"] == 9.0  # numeric string id matches
    assert catalog.lookup({"sdss_id": np.int64(1)})["k_mag"] == 8.0
    assert catalog.lookup({"catalogid": 10})["k_mag"] == 9.0
    assert catalog.lookup({"sdss_id": 1, "catalogid": 10})["k_mag"] == 8.0  # sdss_id first
    assert catalog.lookup({"sdss_id": 3, "catalogid": 10})["k_mag"] == 9.0  # falls back
    assert catalog.lookup({"apogee_id": "2M0"}) is None
    assert catalog.lookup({}) is None


def test_catalog_empty_cells_are_absent(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("sdss_id,k_mag,ebv\n1,,0.2\n2,9.0,\n")
    catalog = SourceCatalog.from_file(path)
    one, two = catalog.lookup({"sdss_id": 1}), catalog.lookup({"sdss_id": 2})
    assert math.isnan(one["k_mag"]) and one["ebv"] == 0.2
    assert two["k_mag"] == 9.0 and math.isnan(two["ebv"])


def test_catalog_without_key_or_values_rejected(tmp_path):
    path = tmp_path / "nokey.csv"
    Table({"ra": [1.0], "k_mag": [9.0]}).write(path, format="ascii.csv")
    with pytest.raises(ValueError, match="sdss_id"):
        SourceCatalog.from_file(path)
    path = tmp_path / "novalues.csv"
    Table({"sdss_id": [1], "ra": [1.0]}).write(path, format="ascii.csv")
    with pytest.raises(ValueError, match="k_mag"):
        SourceCatalog.from_file(path)


def test_a_catalog_file_that_cannot_be_read_is_named(tmp_path):
    (tmp_path / "junk.fits").write_bytes(b"not FITS" * 400)
    (tmp_path / "junk.parquet").write_bytes(b"not Parquet" * 400)
    (tmp_path / "ragged.csv").write_text("sdss_id,k_mag\n1,2,3\n")
    (tmp_path / "folder.csv").mkdir()
    for name, error, words in (("junk.fits", ValueError, "not a catalog file (use CSV, FITS or Parquet)"),
                               ("junk.parquet", ValueError, "not a catalog file (use CSV, FITS or Parquet): "),
                               ("ragged.csv", ValueError,
                                "not a catalog file (use CSV, FITS or Parquet): Number of header columns"),
                               # an OSError stays one: a worker retries it, as a file system that comes back
                               ("folder.csv", IsADirectoryError, "cannot be read: Is a directory"),
                               ("missing.csv", FileNotFoundError, "cannot be read: No such file or directory")):
        with pytest.raises(error) as refused:
            SourceCatalog.from_file(tmp_path / name)
        assert str(refused.value).startswith(f"{tmp_path / name}: {words}"), refused.value
        assert "\n" not in str(refused.value)


# -- schema ----------------------------------------------------------------------------

def test_schema_declarations():
    s = ASTRONN_DIST_SCHEMA
    assert s.pipeline == "astronn_dist"
    assert [f.name for f in s.fields] == ["k_mag", "ebv", "a_k_mag", "L_fakemag", "L_fakemag_err",
                                          "nn_dist", "nn_dist_err"]
    units = {f.name: f.unit for f in s.all_fields}
    assert units["nn_dist"] == units["weighted_dist"] == units["weighted_dist_err"] == "pc"
    for name in ("nn_parallax", "nn_parallax_err", "weighted_parallax", "weighted_parallax_err"):
        assert units[name] == "mas"
    assert {f.name: f.bit for f in s.flags} == {"flag_fakemag_unreliable": 0, "flag_missing_photometry": 1,
                                                "flag_missing_extinction": 2, "flag_no_result": 11}
    assert s.warn_mask == 1 << 2
    assert s.bad_mask == (1 << 0) | (1 << 1) | (1 << 11)


def test_schema_flag_conditions():
    cols = {"L_fakemag": np.array([100.0, 100.0, 100.0, np.nan]),
            "L_fakemag_err": np.array([19.9, 20.0, 5.0, 1.0]),
            "missing_k_mag": np.array([False, False, True, False]),
            "missing_ebv": np.array([False, True, False, False])}
    flags = ASTRONN_DIST_SCHEMA.compute_flags(cols)
    assert flags.tolist() == [0, 1 | 4, 2, 0]
    warn, bad = ASTRONN_DIST_SCHEMA.summary(flags)
    assert warn.tolist() == [False, True, False, False]
    assert bad.tolist() == [False, True, True, False]
    # helper columns are optional
    no_helpers = {k: cols[k] for k in ("L_fakemag", "L_fakemag_err")}
    assert ASTRONN_DIST_SCHEMA.compute_flags(no_helpers).tolist() == [0, 1, 0, 0]
