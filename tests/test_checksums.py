"""FITS checksums: every reading backend checks DATASUM/CHECKSUM of what it reads, with one message."""
from __future__ import annotations

import gzip
import os
import importlib.util
import re

import numpy as np
import pytest
from astropy.io import fits

from workers import readers
from workers.readers.checksum import ChecksumError, ones_complement_sum


def _spec_lite(folder, checksum=True):
    """A synthetic spec-lite file, written again by astropy with or without checksums."""
    from specq.testing.synthetic import make_dataset

    truth = make_dataset(folder, n_boss=1, n_apogee=0, seed=2, formats=("spec-lite",))
    path = folder / truth["path"][0]
    with fits.open(path) as hdul:
        for hdu in hdul:
            for key in ("CHECKSUM", "DATASUM"):
                hdu.header.remove(key, ignore_missing=True)
        hdul.writeto(path, overwrite=True, checksum=checksum)
    return path


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _data_start(path, index):
    with fits.open(path) as hdul:
        return hdul[index].fileinfo()["datLoc"]


def test_the_sum_is_the_fits_standard_one(tmp_path):
    rng = np.random.default_rng(0)
    for size in (0, 1, 3, 2880, 2881, 100_003):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        padded = data + b"\0" * (-len(data) % 4)
        words = np.frombuffer(padded, ">u4").astype(object)
        expected = 0
        for w in words:  # the definition: add, carrying the overflow back in
            expected += int(w)
            expected = (expected & 0xFFFFFFFF) + (expected >> 32)
        assert ones_complement_sum(data) == expected
    path = _spec_lite(tmp_path)
    with fits.open(path) as hdul:
        start, size = hdul[1].fileinfo()["datLoc"], hdul[1].fileinfo()["datSpan"]
        declared = int(hdul[1].header["DATASUM"])
    assert ones_complement_sum(path.read_bytes()[start:start + size]) == declared


def test_the_compiled_sum_is_numpys_at_any_alignment_and_block(monkeypatch):
    from workers.readers import checksum

    monkeypatch.setattr(checksum, "_COMPILED_AFTER_BYTES", 0)  # the kernel from the first large unit on
    data = np.random.default_rng(1).integers(0, 256, 300_003, dtype=np.uint8).tobytes()
    parts = [memoryview(data)[start:stop] for start, stop in ((0, 300_000), (1, 300_001), (3, 300_003), (2, 65_538),
                                                              (0, 0), (1, 4), (5, 2885), (0, 2883))]
    compiled = [checksum.ones_complement_sum(part, 7) for part in parts]
    assert checksum._compiled is not None  # loaded by the first unit of 64 KiB: the small ones used it too
    monkeypatch.setattr(checksum, "_FOLD_WORDS", 1000)  # many blocks, each folded
    assert [checksum.ones_complement_sum(part, 7) for part in parts] == compiled
    monkeypatch.setattr(checksum, "_COMPILED_BYTES", 1 << 40)  # numpy's sum for every size
    monkeypatch.setattr(checksum, "_compiled", None)
    assert [checksum.ones_complement_sum(part, 7) for part in parts] == compiled
    assert checksum.ones_complement_sum(b"\xff" * (1 << 20)) == checksum.NEGATIVE_ZERO


def test_a_short_run_sums_with_numpy_and_a_long_one_loads_the_kernel(monkeypatch):
    from workers.readers import checksum

    monkeypatch.setattr(checksum, "_compiled", None)
    monkeypatch.setattr(checksum, "_numpy_summed", 0)
    monkeypatch.setattr(checksum, "_COMPILED_AFTER_BYTES", 1 << 20)
    unit = bytes(range(256)) * 1024  # 256 KiB
    sums = [checksum.ones_complement_sum(unit) for _ in range(4)]  # 1 MiB: numpy's alone
    assert checksum._compiled is None and checksum._numpy_summed == 1 << 20
    sums.append(checksum.ones_complement_sum(unit))
    assert checksum._compiled is not None and len(set(sums)) == 1


def test_the_sum_compiles_where_numba_cannot_keep_a_cache(monkeypatch):
    import numba

    from workers.readers import checksum

    real_njit = numba.njit

    def njit(*args, **options):
        if options.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return real_njit(*args, **options)

    monkeypatch.setattr(numba, "njit", njit)
    monkeypatch.setattr(checksum, "_compiled", None)
    monkeypatch.setattr(checksum, "_COMPILED_AFTER_BYTES", 0)
    assert checksum.ones_complement_sum(b"\0\0\0\1" * (1 << 16)) == 1 << 16
    assert checksum._compiled is not None


BACKENDS = ["native", "astropy", *(["fitsio"] if importlib.util.find_spec("fitsio") else [])]


def _flagged(path, backend):
    """The error of the one flagged job the engine makes of ``path``'s spectrum."""
    from workers.engine import read_jobs
    from workers.refs import SpectrumRef

    jobs = read_jobs(SpectrumRef(path.name, 1, 0), path.parent, "boss", backend=backend)
    assert len(jobs) == 1 and jobs[0].spectrum is None
    return jobs[0].error


def test_a_flipped_data_bit_is_the_same_flagged_row_through_every_backend(tmp_path, monkeypatch):
    path = _spec_lite(tmp_path)
    good = {b: readers.read_spectrum(path, 1, 0, backend=b) for b in BACKENDS}  # checked, and they add up
    _flip(path, _data_start(path, 1) + 1000)
    messages = set()
    for backend in [*BACKENDS, None]:  # None: the default, whose astropy fallback does not read past it
        with pytest.raises(ChecksumError) as caught:
            readers.read_spectrum(path, 1, 0, backend=backend)
        messages.add(str(caught.value))
    (message,) = messages  # one text, whichever backend read the file
    assert "HDU 1 (COADD)" in message and "DATASUM says" in message
    declared, actual = map(int, re.search(r"says (\d+), the data unit sums to (\d+)", message).groups())
    assert declared != actual
    # Through the engine: one flagged job with that message from each backend, nothing raised.
    errors = {_flagged(path, backend) for backend in BACKENDS}
    assert len(errors) == 1 and message in errors.pop()
    # Unchecked, every backend reads the bytes as they are, to the same spectrum.
    monkeypatch.setenv("SPECQ_VERIFY_CHECKSUMS", "0")
    unchecked = [readers.read_spectrum(path, 1, 0, backend=backend) for backend in BACKENDS]
    for spectrum in unchecked:
        assert spectrum.flux.size == good["native"].flux.size
        assert np.array_equal(spectrum.flux, unchecked[0].flux) and np.array_equal(spectrum.ivar, unchecked[0].ivar)


def test_astropys_second_opinion_checks_the_sums_too(tmp_path, monkeypatch):
    """When the native reader cannot read a file, astropy's reading of it is checked as well."""
    from workers.readers import native

    path = _spec_lite(tmp_path)
    _flip(path, _data_start(path, 1) + 1000)
    with pytest.raises(ChecksumError) as native_error:
        readers.read_spectrum(path, 1, 0, backend="native")

    def broken_scan(path, *args):
        raise readers.SpectrumError(f"{path}: simulated native header bug")

    monkeypatch.setattr(native, "scan_headers", broken_scan)
    with pytest.raises(ChecksumError) as rescued:
        readers.read_spectrum(path, 1, 0)  # rescued by astropy: its sums are wrong, not the header
    assert str(rescued.value) == str(native_error.value)
    monkeypatch.setenv("SPECQ_VERIFY_CHECKSUMS", "0")
    assert readers.read_spectrum(path, 1, 0).flux.size


def test_a_changed_header_fails_checksum_and_the_switch_turns_the_check_off(tmp_path, monkeypatch):
    path = _spec_lite(tmp_path)
    index = _data_start(path, 1) - 1  # the header's padding after END: no card reads it
    _flip(path, index)
    with pytest.raises(ChecksumError, match=r"HDU 1 \(COADD\): checksum mismatch: CHECKSUM .* sum to \d+, not 4294967295"):
        readers.read_spectrum(path, 1, 0, backend="native")
    _flip(path, index)
    _flip(path, _data_start(path, 1) + 1000)
    monkeypatch.setenv("SPECQ_VERIFY_CHECKSUMS", "0")
    assert readers.read_spectrum(path, 1, 0, backend="native").flux.size  # read as it is, unchecked


def test_files_without_checksums_and_gzipped_files_read_as_before(tmp_path):
    plain = _spec_lite(tmp_path / "plain", checksum=False)
    summed = _spec_lite(tmp_path / "summed")
    gz = summed.with_name(summed.name + ".gz")
    gz.write_bytes(gzip.compress(summed.read_bytes()))
    a = readers.read_spectrum(plain, 1, 0, backend="native")
    for other in (summed, gz):
        b = readers.read_spectrum(other, 1, 0, backend="native")
        assert np.array_equal(a.flux, b.flux) and np.array_equal(a.ivar, b.ivar)
    data = bytearray(summed.read_bytes())
    data[_data_start(summed, 1) + 50] ^= 0x10
    gz.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(ChecksumError, match="HDU 1"):
        readers.read_spectrum(gz, 1, 0, backend="native")


def _mwm_visit(folder, visits):
    from specq.testing.synthetic import write_mwm_visit

    path = folder / "mwmVisit-0.8.1-4242.fits"
    write_mwm_visit(path, [dict(teff=5000.0, logg=4.0, fe_h=0.0, snr=40.0, seed=i, mjd=60000 + i) for i in range(visits)],
                    sdss_id=4242, catalogid=4243)
    return path


def _counting_sums(monkeypatch):
    """Bytes summed per call of the checksum, as the native reader calls it."""
    from workers.readers import native

    summed: list[int] = []
    real = native.check_hdu

    def counting(where, header, header_bytes, data):
        summed.append(len(data))
        return real(where, header, header_bytes, data)

    monkeypatch.setattr(native, "check_hdu", counting)
    return summed


def _settled(monkeypatch, settled: bool):
    """Files written just now count as settled (last changed long enough ago), or none does."""
    from workers.readers import native

    monkeypatch.setattr(native, "_SETTLED_NS", -10**12 if settled else 10**18)


def test_a_settled_files_units_are_summed_once_for_all_its_visits(tmp_path, monkeypatch):
    path = _mwm_visit(tmp_path, 5)
    slots = readers.list_spectra(path, "boss")
    summed = _counting_sums(monkeypatch)
    _settled(monkeypatch, True)
    first = [readers.read_spectrum(path, s.hdu, s.row) for s in slots]
    once = sorted(summed)
    assert once and len(once) <= 3  # HDU 0, the BOSS table: each once, not once per visit
    again = [readers.read_spectrum(path, s.hdu, s.row) for s in slots]
    assert sorted(summed) == once  # nothing summed again for the same version
    for a, b in zip(first, again):
        assert np.array_equal(a.flux, b.flux) and np.array_equal(a.ivar, b.ivar)
    # A changed file is another version (here its bytes and its mtime): summed again, and the flip
    # found on every read after it (a failed check is never remembered as a good one).
    status = path.stat()
    _flip(path, _data_start(path, slots[0].hdu) + 1000)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns - 10**9))
    for _ in range(2):
        with pytest.raises(ChecksumError, match=f"HDU {slots[0].hdu}"):
            readers.read_spectrum(path, slots[0].hdu, slots[0].row)


def test_a_file_changed_while_read_without_sums_is_a_retry_not_its_new_bytes(tmp_path, monkeypatch):
    from workers.readers.backends import open_fits

    path = _mwm_visit(tmp_path, 3)
    slots = readers.list_spectra(path, "boss")
    _settled(monkeypatch, True)
    readers.read_spectrum(path, slots[0].hdu, slots[0].row)  # summed, and remembered for this version
    summed = _counting_sums(monkeypatch)
    with open_fits(path, "native") as handle:
        assert handle.read_row(slots[1].hdu, slots[1].row, handle.columns(slots[1].hdu)[:1])  # unchanged: read
        status = path.stat()
        _flip(path, _data_start(path, slots[1].hdu) + 1000)
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns - 10**9))
        with pytest.raises(readers.TransientReadError, match="changed while it was read"):
            handle.read_row(slots[1].hdu, slots[1].row, handle.columns(slots[1].hdu)[:1])
    assert summed == []  # the version checked before was read without summing it again


def test_a_file_changed_lately_is_summed_on_every_read(tmp_path, monkeypatch):
    path = _mwm_visit(tmp_path, 3)
    slots = readers.list_spectra(path, "boss")
    summed = _counting_sums(monkeypatch)
    _settled(monkeypatch, False)
    for s in slots:
        readers.read_spectrum(path, s.hdu, s.row)
    assert len(summed) == 2 * len(slots)  # HDU 0 and the table, for every visit
    # So a change that leaves the file's size and times as they were (a coarse clock) is still found.
    _flip(path, _data_start(path, slots[0].hdu) + 1000)
    with pytest.raises(ChecksumError):
        readers.read_spectrum(path, slots[0].hdu, slots[0].row)


def test_what_was_checked_is_summed_again_after_a_minute(tmp_path, monkeypatch):
    from workers.readers import native

    path = _mwm_visit(tmp_path, 2)
    slots = readers.list_spectra(path, "boss")
    summed = _counting_sums(monkeypatch)
    _settled(monkeypatch, True)
    readers.read_spectrum(path, slots[0].hdu, slots[0].row)
    checked = len(summed)
    monkeypatch.setattr(native, "_VERIFIED_FOR_NS", 0)
    readers.read_spectrum(path, slots[1].hdu, slots[1].row)
    assert len(summed) == 2 * checked


@pytest.mark.parametrize("backend", ["astropy", "gzip"])
def test_other_backends_and_gzipped_files_sum_on_every_read(tmp_path, monkeypatch, backend):
    path = _mwm_visit(tmp_path, 3)
    if backend == "gzip":
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(path.with_suffix("").read_bytes()))
    slots = readers.list_spectra(path, "boss")
    summed = _counting_sums(monkeypatch)
    _settled(monkeypatch, True)
    for s in slots:
        readers.read_spectrum(path, s.hdu, s.row, backend="astropy" if backend == "astropy" else "native")
    assert len(summed) == 2 * len(slots)
