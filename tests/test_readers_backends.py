"""The FITS backends: they agree on every format, hand out copies, decode general FITS, and how one is chosen."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from reader_files import AVAILABLE, STAR
from reader_files import files  # noqa: F401 (a fixture)
from specq.testing import synthetic
from workers.readers import BACKENDS, DEFAULT_BACKEND, list_spectra, measure_readers, read_spectrum
from workers.readers import backends, native
from workers.spectrum import SpectrumError


# --------------------------------------------------------------------------- backends
def test_backends_agree_on_every_format(files):
    assert DEFAULT_BACKEND in BACKENDS
    compared = 0
    for path in files.values():
        for instrument in ("boss", "apogee"):
            try:
                slots = list_spectra(path, instrument, backend="astropy")
            except SpectrumError:
                continue
            for backend in AVAILABLE:
                assert list_spectra(path, instrument, backend=backend) == slots
            for slot in slots:
                reference = read_spectrum(path, slot.hdu, slot.row, backend="astropy")
                for backend in AVAILABLE:
                    other = read_spectrum(path, slot.hdu, slot.row, backend=backend)
                    for name in ("wavelength", "flux", "ivar", "error", "bitmask"):
                        mine, theirs = getattr(reference, name), getattr(other, name)
                        assert (mine is None) == (theirs is None), (path, backend, name)
                        if mine is not None:
                            assert mine.dtype == theirs.dtype and mine.dtype.isnative
                            np.testing.assert_array_equal(mine, theirs)
                    assert (other.ids, other.meta, other.is_visit, other.instrument) == \
                        (reference.ids, reference.meta, reference.is_visit, reference.instrument)
                compared += 1
    assert compared == 13  # the mwmVisit APOGEE row too: listed as a visit, for a pipeline to refuse


def test_arrays_are_copies_not_views_of_the_file(files):
    spectrum = read_spectrum(files["star_both"], 3, 0)
    for name in ("flux", "ivar", "error", "bitmask"):
        array = getattr(spectrum, name)
        assert array.dtype.isnative and array.flags.writeable
        array[0] = 0  # must not raise (read-only views of a buffer would)
    # The wavelengths are the process's shared grid (workers.spectrum.log10_grid): read-only
    # on purpose, and memory of their own, not the file's.
    assert spectrum.wavelength.flags.owndata and not spectrum.wavelength.flags.writeable

def test_measure_readers(files):
    timings = measure_readers([files["lite"], files["star_both"], files["apstar3"]], repeat=1)
    assert set(timings) == set(AVAILABLE)
    assert all(0 < seconds < 5 for seconds in timings.values())


def test_bad_arguments(files):
    with pytest.raises(ValueError, match="instrument"):
        list_spectra(files["lite"], "optical")
    with pytest.raises(ValueError, match="unknown FITS backend"):
        read_spectrum(files["lite"], 1, 0, backend="cfitsio")


def test_native_backend_decodes_general_fits_like_astropy(tmp_path):
    """Scaled/unsigned integers, logicals, strings, multi-row images: what real files may hold."""
    path = tmp_path / "general.fits"
    rows = 5
    table = fits.BinTableHDU.from_columns([
        fits.Column("u16", "I", bzero=32768, array=np.array([0, 1, 40000, 65535, 7], dtype=np.uint16)),
        fits.Column("u32", "J", bzero=2**31, array=np.array([0, 1, 3_000_000_000, 4, 5], dtype=np.uint32)),
        fits.Column("scaled", "I", array=np.array([0, 1, 2, -1, 4], dtype=np.int16)),
        fits.Column("flag", "L", array=np.array([True, False, True, True, False])),
        fits.Column("name", "7A", array=np.array(["a", "bb", "ccc", "", "eeeeeee"])),
        fits.Column("vec", "3D", array=np.arange(rows * 3, dtype=float).reshape(rows, 3)),
    ], name="T")
    image = fits.ImageHDU(np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    table.header["TSCAL3"], table.header["TZERO3"] = 0.5, 10.0  # physical = 0.5 raw + 10
    fits.HDUList([fits.PrimaryHDU(), table, image]).writeto(path)
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul[1].data["scaled"], [10.0, 10.5, 11.0, 9.5, 12.0])
        expected = {name: np.array(hdul[1].data[name]) for name in hdul[1].columns.names}
        expected_image = np.array(hdul[2].data)
    for backend in AVAILABLE:
        with backends.open_fits(path, backend) as handle:
            for name, values in expected.items():
                if backend == "fitsio" and name == "scaled":
                    continue  # fitsio 1.4 mis-decodes TSCAL'd integer columns (none in SDSS spectra)
                column = handle.read_column(1, name)
                if values.dtype.kind in "SU":
                    assert [str(v).strip() for v in column.astype(str)] == [str(v).strip() for v in values]
                else:
                    np.testing.assert_array_equal(column, values, err_msg=f"{backend} {name}")
                row = handle.read_row(1, 3, [name])[name]
                if values.dtype.kind not in "SU":
                    np.testing.assert_array_equal(row, values[3])
            for index in range(3):
                np.testing.assert_array_equal(handle.read_image_row(2, index), expected_image[index])


def test_many_visits_list_row_by_row(tmp_path):
    """A visit table past the whole-read limit: ids come from per-row reads, the same in every backend."""
    path = tmp_path / "mwmVisit-0.8.1-5.fits"
    visits = [dict(STAR, v_r=float(i), seed=i, mjd=60000 + i, catalogid=1000 + i) for i in range(46)]
    synthetic.write_mwm_visit(path, visits, sdss_id=5, catalogid=6)
    with fits.open(path) as hdul:
        assert hdul[1].header["NAXIS1"] * hdul[1].header["NAXIS2"] > native._WHOLE_TABLE_BYTES
    expected = list_spectra(path, "boss", backend="astropy")
    assert [slot.ids["catalogid"] for slot in expected] == [1000 + i for i in range(46)]
    for backend in AVAILABLE:
        assert list_spectra(path, "boss", backend=backend) == expected
    last = read_spectrum(path, 1, 45)
    assert synthetic.read_truth(path, 1, 45)["v_r"] == 45.0 and last.ids["catalogid"] == 1045


# --------------------------------------------------------------------------- backend choice
def test_backend_argument_and_default(files, monkeypatch):
    def native_only(self, *args):
        raise AssertionError("native backend used")

    monkeypatch.setattr(native.NativeFits, "_read_image_row", native_only)
    assert DEFAULT_BACKEND == "native"
    with pytest.raises(AssertionError, match="native backend used"):
        read_spectrum(files["apstar1"], 1, 0)  # None: the default, native
    assert read_spectrum(files["apstar1"], 1, 0, backend="astropy").flux.size == 8575  # the argument wins


def test_settings_know_the_readers_backends():
    from workers.settings import DEFAULT_FITS_BACKEND, FITS_BACKENDS, Settings

    assert FITS_BACKENDS == BACKENDS and DEFAULT_FITS_BACKEND == DEFAULT_BACKEND == Settings().fits_backend


def test_readers_ignore_the_environment(files, monkeypatch):
    """The backend is a setting (workers.settings), passed on by callers: the readers never read it."""
    monkeypatch.setenv("SPECQ_FITS_BACKEND", "bogus")
    code = ("import sys, workers.readers as r; "
            "print(r.DEFAULT_BACKEND, r.read_spectrum(sys.argv[1], 1, 0).flux.size)")
    done = subprocess.run([sys.executable, "-c", code, str(files["apstar1"])], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["native", "8575"]


@pytest.mark.parametrize("value, expected", [(" Astropy ", "astropy"), ("", "native"), ("fitsio", "fitsio"),
                                             ("bogus", None)])
def test_backend_setting_from_the_environment(value, expected, monkeypatch):
    from workers.settings import load_settings

    monkeypatch.setenv("SPECQ_FITS_BACKEND", value)
    if expected is None:
        with pytest.raises(ValueError, match="fits_backend = 'bogus'.*use one of astropy, fitsio, native"):
            load_settings()
    else:
        assert load_settings().fits_backend == expected


def test_backend_setting_from_specq_toml(tmp_path, monkeypatch):
    from workers.settings import load_settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "specq.toml").write_text('[specq]\nfits_backend = "astropy"\n')
    assert load_settings().fits_backend == "astropy"
    monkeypatch.setenv("SPECQ_FITS_BACKEND", "native")  # the environment wins over the file
    assert load_settings().fits_backend == "native"
