"""A corpus of bad input, each kind with the outcome it must have, written next to it.

Every kind is made by code (nothing binary is committed): a good synthetic SDSS file
from :mod:`specq.testing.synthetic`, then cut, emptied, renamed or edited; or a hand-made
queue message. :data:`CASES` lists them; ``tests/test_corpus.py`` sends the whole corpus
through a real worker and checks each outcome.

Outcomes (:class:`Outcome`):

- ``ok``: one result row per spectrum, no error, the failure bit clear;
- ``row``: one flagged row per spectrum: the named flag bit set and, when given, the
  error containing the text (photometry problems have a flag but no error);
- ``refused``: nothing is sent; enqueueing raises, or notes, a line containing the text;
- ``retried``: transient; the worker retries, then writes a row whose error has the text;
- ``rejected``: the worker refuses the message itself (no row) and logs the text.

Each case writes under ``<data root>/<case name>/`` (or its ``outside`` twin) and is sent
as its own messages, so its rows are found by path prefix or by task id.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from specq.testing import synthetic

OK, ROW, REFUSED, RETRIED, REJECTED = "ok", "row", "refused", "retried", "rejected"
BOSS_FAIL, APOGEE_FAIL = "flag_runtime_exception", "flag_no_result"

# Photometry of the APOGEE stars, as the source catalog of the corpus gives it (CSV text).
CATALOG_ROWS = (
    ("2M00000101+0000101", "-9999", "0.05"),   # the APOGEE "no value" sentinel
    ("2M00000102+0000102", "nan", "0.05"),
    ("2M00000103+0000103", "n/a", "bright"),   # strings where numbers belong
    ("2M00000104+0000104", "9.5", "0.05"),     # a good star, for the good APOGEE files
)


@dataclass(frozen=True)
class Outcome:
    """What must come of a case (see the module docstring)."""

    kind: str
    text: str | None = None
    flag: str | None = None
    rows: int = 1


@dataclass
class Message:
    """A message sent as is, bypassing the producer's checks (what a hostile or buggy client sends)."""

    refs: Any
    options: Any = field(default_factory=dict)
    serializer: str = "json"


@dataclass
class Sent:
    """What a case hands to the queue: files (through ``submit``) or raw messages.

    ``after_enqueue`` runs once everything is enqueued, before the worker starts.
    """

    files: list = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    after_enqueue: Callable[[], None] | None = None


@dataclass(frozen=True)
class Case:
    """One kind of input: how to make it, which pipeline takes it, what must come of it."""

    name: str
    pipeline: str
    build: Callable[[Path, Path], Sent]
    outcome: Outcome
    why: str = ""


# -- builders -------------------------------------------------------------------------------
def spec_lite(path: Path, seed: int = 1, **kw) -> Path:
    """A good spec-lite file (BOSS, 4648 pixels)."""
    args = dict(teff=5400.0, logg=4.3, fe_h=-0.2, v_r=12.0, snr=30.0, seed=seed)
    args.update(kw)
    synthetic.write_spec_lite(path, **args)
    return path


def apstar(path: Path, seed: int = 1, apogee_id: str = "2M00000104+0000104", **kw) -> Path:
    """A good apStar file (APOGEE, 8575 pixels) of a star the corpus catalog knows."""
    args = dict(teff=4700.0, logg=2.5, fe_h=-0.1, fakemag=60.0, snr=80.0, seed=seed, apogee_id=apogee_id)
    args.update(kw)
    synthetic.write_apstar(path, **args)
    return path


def _edit_hdu(path: Path, hdu: int, edit: Callable) -> Path:
    """Rewrite ``path`` with ``edit(data)`` applied to one HDU's data (astropy, in memory)."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    edit(hdul[hdu].data)
    hdul.writeto(path, overwrite=True, output_verify="silentfix", checksum=True)
    return path


def _replace_table(path: Path, hdu: int, change: Callable) -> Path:
    """Rewrite one table HDU from ``change(table)`` (columns dropped, renamed, reshaped)."""
    from astropy.io import fits
    from astropy.table import Table

    with fits.open(path) as hdul:
        hdus = [h.copy() for h in hdul]
    table = Table(hdus[hdu].data)
    changed = change(table)
    table = table if changed is None else changed
    header = hdus[hdu].header
    new = fits.table_to_hdu(table)
    for key in ("EXTNAME", "INSTRMNT", "OBSRVTRY", "NPIXELS", "CRVAL", "CDELT"):
        if key in header:
            new.header[key] = header[key]
    hdus[hdu] = new
    fits.HDUList(hdus).writeto(path, overwrite=True, output_verify="silentfix", checksum=True)
    return path


def _cut(path: Path, size: int) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:size])
    return path


def _hdu_offsets(path: Path) -> list[int]:
    """Byte offsets where each HDU's header starts (plain FITS, 2880-byte blocks)."""
    data = path.read_bytes()
    return [0] + [i for i in range(2880, len(data), 2880) if data[i:i + 8] == b"XTENSION"]


def _at(root: Path, case: str, name: str) -> Path:
    path = root / case / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _file_case(name: str, pipeline: str, make: Callable[[Path], Path], outcome: Outcome, why: str = "",
               file_name: str = "spec-000100-60000-1.fits") -> Case:
    """A case of one file under ``<root>/<name>/``, made by ``make(path)``."""
    def build(root: Path, outside: Path) -> Sent:
        path = make(_at(root, name, file_name))
        return Sent(files=[path])
    return Case(name, pipeline, build, outcome, why)


def _boss_pixels(column: str, values: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        def edit(data):
            data[column] = values(np.array(data[column]))
        return _edit_hdu(spec_lite(path), 1, edit)
    return make


def _huge_spec_lite(path: Path) -> Path:
    """A spec-lite whose COADD claims 40 million rows (1.4 GB, sparse on disk: holes cost nothing)."""
    spec_lite(path)
    data = path.read_bytes()
    offsets = _hdu_offsets(path)
    header = bytearray(data[offsets[1]:offsets[2]])
    at = header.index(b"NAXIS2  =")
    rows = 40_000_000
    header[at:at + 80] = f"NAXIS2  = {rows:>20}".ljust(80).encode()
    width = int(bytes(header[header.index(b"NAXIS1  =") + 10:header.index(b"NAXIS1  =") + 30]).strip())
    end = header.index(b"END     ") + 80
    header_bytes = bytes(header[:-(-end // 2880) * 2880 or 2880])
    with open(path, "wb") as handle:
        handle.write(data[:offsets[1]] + header_bytes)
        handle.truncate(handle.tell() + -(-rows * width // 2880) * 2880)
    return path


def _many_cards(path: Path) -> Path:
    """A spec-lite whose primary header has 10,000 more cards (800 kB of header)."""
    spec_lite(path)
    data = path.read_bytes()
    offsets = _hdu_offsets(path)
    primary = data[:offsets[1]].rstrip(b" ")
    for key in (b"CHECKSUM", b"DATASUM "):  # the header changes: its sums would be stale
        at = primary.index(key)
        primary = primary[:at] + primary[at + 80:]
    end = primary.rindex(b"END")
    cards = b"".join(f"X{i:07d}= {i:>20} / card {i}".ljust(80).encode() for i in range(10_000))
    header = primary[:end] + cards + b"END".ljust(80)
    header += b" " * (-len(header) % 2880)
    path.write_bytes(header + data[offsets[1]:])
    return path


def _zero_row_coadd(path: Path) -> Path:
    return _replace_table(spec_lite(path), 1, lambda t: t[:0])


def _flux_ivar_lengths(path: Path) -> Path:
    """An mwmStar whose BOSS ivar column has 4000 values a row where flux has 4648."""
    synthetic.write_mwm_star(path, boss=dict(teff=5600, logg=4.4, fe_h=0.0, snr=40, seed=7), sdss_id=7,
                             catalogid=77)

    def shorten(table):
        table["ivar"] = np.array(table["ivar"])[:, :4000]
    return _replace_table(path, 1, shorten)


def _apogee_8574(path: Path) -> Path:
    from astropy.io import fits

    apstar(path)
    with fits.open(path) as hdul:
        hdus = [h.copy() for h in hdul]
    for i in range(1, 8):
        hdus[i].data = hdus[i].data[..., :8574]
    hdus[0].header["NWAVE"] = 8574
    fits.HDUList(hdus).writeto(path, overwrite=True, checksum=True)
    return path


def _gzip_truncated(path: Path) -> Path:
    plain = spec_lite(path.with_suffix(""))
    blob = gzip.compress(plain.read_bytes())
    plain.unlink()
    path.write_bytes(blob[: len(blob) // 2])
    return path


def _outside_symlink(root: Path, outside: Path, name: str) -> Path:
    target = spec_lite(outside / name / "spec-000100-60000-9.fits")
    link = _at(root, name, "spec-000100-60000-9.fits")
    os.symlink(target, link)
    return link


# -- the cases ------------------------------------------------------------------------------
def _files() -> list[Case]:
    boss_fail = lambda text: Outcome(ROW, text, BOSS_FAIL)  # noqa: E731
    return [
        _file_case("empty_file", "bossnet", lambda p: (p.write_bytes(b""), p)[1], boss_fail("empty")),
        _file_case("not_fits", "bossnet", lambda p: (p.write_text("flux,ivar\n1,2\n" * 300), p)[1],
                   boss_fail("not a FITS file")),
        _file_case("truncated_mid_header", "bossnet", lambda p: _cut(spec_lite(p), 1000), boss_fail("truncated")),
        _file_case("truncated_mid_data", "bossnet",
                   lambda p: _cut(spec_lite(p), _hdu_offsets(p)[1] + 2880 + 40_000), boss_fail("truncated")),
        _file_case("gzip_truncated", "bossnet", _gzip_truncated, boss_fail("gzip"),
                   file_name="spec-000100-60000-1.fits.gz"),
        _file_case("missing_hdus", "bossnet", lambda p: _cut(spec_lite(p), _hdu_offsets(p)[1]),
                   boss_fail("HDU 1"), "only the primary HDU is left"),
        _file_case("zero_row_coadd", "bossnet", _zero_row_coadd, Outcome(REFUSED, "no spectrum for bossnet"),
                   "a spec-lite whose COADD has 0 rows holds no spectrum: nothing is sent, the note says so"),
        _file_case("zero_row_mwm", "bossnet",
                   lambda p: (synthetic.write_mwm_star(p, apogee=dict(teff=4800, logg=2.6, fe_h=0, snr=60, seed=2,
                                                                      fakemag=40.0),
                                                       sdss_id=8, catalogid=88, apogee_id="2M00000104+0000104"), p)[1],
                   Outcome(REFUSED, "no spectrum for bossnet"), "mwmStar whose BOSS HDUs have zero rows",
                   file_name="mwmStar-0.8.1-8.fits"),
        _file_case("missing_column", "bossnet",
                   lambda p: _replace_table(spec_lite(p), 1, lambda t: t.remove_column("IVAR")), boss_fail("IVAR")),
        _file_case("renamed_column", "bossnet",
                   lambda p: _replace_table(spec_lite(p), 1, lambda t: t.rename_column("FLUX", "FLUXES")),
                   boss_fail("FLUX")),
        _file_case("flux_ivar_lengths_differ", "bossnet", _flux_ivar_lengths, boss_fail("ivar"),
                   file_name="mwmStar-0.8.1-7.fits"),
        _file_case("all_nan_flux", "bossnet", _boss_pixels("FLUX", lambda f: np.full_like(f, np.nan)),
                   boss_fail("no finite flux")),
        _file_case("all_zero_ivar", "bossnet", _boss_pixels("IVAR", np.zeros_like), Outcome(OK),
                   "the published fallback: every error = median flux x DEFAULT_ERROR_FRACTION"),
        _file_case("negative_ivar", "bossnet", _boss_pixels("IVAR", lambda v: -np.abs(v) - 1.0),
                   boss_fail("no usable pixels in the noise draws")),
        _file_case("infinite_ivar", "bossnet", _boss_pixels("IVAR", lambda v: np.full_like(v, np.inf)), Outcome(OK),
                   "as published: zero errors, so the MC uncertainties are 0 (unsure this is right)"),
        _file_case("infinite_flux", "bossnet", _boss_pixels("FLUX", lambda f: np.where(np.arange(f.size) % 7, f, np.inf)),
                   Outcome(OK), "one pixel in 7 infinite: those pixels are left out, the rest is used"),
        _file_case("nan_wavelength", "bossnet",
                   _boss_pixels("LOGLAM", lambda w: np.where(np.arange(w.size) == 100, np.nan, w)),
                   boss_fail("the wavelength grid has non-finite values")),
        _file_case("non_monotonic_wavelength", "bossnet", _boss_pixels("LOGLAM", lambda w: w[::-1].copy()),
                   boss_fail("not positive and increasing")),
        _file_case("grid_misses_3800_8900", "bossnet", _boss_pixels("LOGLAM", lambda w: w + 0.45),
                   boss_fail("no wavelength overlap with 3800-8900")),
        _file_case("grid_covers_part", "bossnet", _boss_pixels("LOGLAM", lambda w: w + 0.2),
                   Outcome(OK), "covers 5600-15900 A: the rest of 3800-8900 A is padded, as published"),
        _file_case("name_contradicts_content", "bossnet", spec_lite,
                   boss_fail("the file name says apStar but the content is spec-lite"),
                   "a spec-lite named like an apStar: refused, naming both (either could be wrong)",
                   file_name="apStar-dr17-apo25m-2M00000000+0000000.fits"),
        _file_case("all_negative_flux", "bossnet", _boss_pixels("FLUX", lambda f: -np.abs(f) - 1.0),
                   boss_fail("too little data for BossNet: the flux is not positive"),
                   "a network answers anything: below the least data a pipeline states, a flagged row"),
        _file_case("twenty_pixels", "bossnet", lambda p: _replace_table(spec_lite(p), 1, lambda t: t[1000:1020]),
                   boss_fail("too little data for BossNet: 20 good pixels"), "MIN_GOOD_PIXELS"),
        _file_case("narrow_coverage", "bossnet",
                   _boss_pixels("FLUX", lambda f: np.where(np.arange(f.size) < 1000, f, np.nan)),
                   boss_fail("too little data for BossNet: good pixels cover"),
                   "finite flux only blueward of ~4500 A: MIN_COVERAGE"),
        _file_case("header_10000_cards", "bossnet", _many_cards, Outcome(OK)),
        _file_case("huge_file", "bossnet", _huge_spec_lite, boss_fail("pixels"),
                   "COADD claims 40 M rows (1.4 GB); refused before any pixel is read"),
    ]


def _apogee_files() -> list[Case]:
    fail = lambda text: Outcome(ROW, text, APOGEE_FAIL)  # noqa: E731
    star = "apStar-dr17-apo25m-2M00000104+0000104.fits"

    def photometry_case(name: str, apogee_id: str, why: str) -> Case:
        return _file_case(name, "astronn_dist", lambda p: apstar(p, apogee_id=apogee_id),
                          Outcome(ROW, None, "flag_missing_photometry"), why,
                          file_name=f"apStar-dr17-apo25m-{apogee_id}.fits")

    def visit_row(root: Path, outside: Path) -> Sent:
        path = apstar(_at(root, "apstar_visit_row", star), nvisits=3)
        return Sent(messages=[Message([{"path": path.relative_to(root).as_posix(), "hdu": 1, "row": 3}])])

    return [
        _file_case("apogee_8574_pixels", "astronn_dist", _apogee_8574, fail("8574"), file_name=star),
        Case("apstar_visit_row", "astronn_dist", visit_row, fail("visit"), "row 3 of a 3-visit apStar"),
        _file_case("mwm_visit_for_astronn", "astronn_dist",
                   lambda p: (synthetic.write_mwm_visit(p, [dict(teff=4800, logg=2.5, fe_h=-0.3, snr=40, seed=3,
                                                                 instrument="apogee")], sdss_id=9, catalogid=99), p)[1],
                   fail("visit"), file_name="mwmVisit-0.8.1-9.fits"),
        _file_case("apogee_all_nan_flux", "astronn_dist",
                   lambda p: _edit_hdu(apstar(p), 1, lambda d: d.__setitem__(Ellipsis, np.nan)),
                   fail("no finite, positive flux"), file_name=star),
        _file_case("apogee_one_detector", "astronn_dist",
                   lambda p: _edit_hdu(apstar(p), 1, lambda d: d.__setitem__((Ellipsis, slice(3000, None)), np.nan)),
                   fail("too little data for AstroNN distances: good pixels cover"),
                   "finite flux on the blue detector only: MIN_COVERAGE", file_name=star),
        _file_case("apogee_negative_median_flux", "astronn_dist",
                   lambda p: _edit_hdu(apstar(p), 1, lambda d: d.__setitem__(Ellipsis, np.where(
                       np.arange(d.shape[-1]) % 10 == 0, np.abs(d), -np.abs(d) - 1.0))),
                   fail("too little data for AstroNN distances: the flux is not positive"), file_name=star),
        _file_case("k_mag_99999_header", "astronn_dist", lambda p: apstar(p, apogee_id="2M00000100+0000100",
                                                                           k_mag=99.999, ebv=0.05),
                   Outcome(ROW, None, "flag_missing_photometry"), "header K = 99.999, star not in the catalog",
                   file_name="apStar-dr17-apo25m-2M00000100+0000100.fits"),
        photometry_case("k_mag_minus_9999_catalog", "2M00000101+0000101", "catalog k_mag = -9999"),
        photometry_case("k_mag_nan_catalog", "2M00000102+0000102", "catalog k_mag = nan"),
        photometry_case("strings_in_catalog", "2M00000103+0000103", "catalog k_mag 'n/a', ebv 'bright'"),
        Case("photometry_wrong_type_in_message", "astronn_dist",
             lambda root, outside: Sent(messages=[Message([{
                 "path": apstar(_at(root, "photometry_wrong_type_in_message", star)).relative_to(root).as_posix(),
                 "hdu": 1, "row": 0, "photometry": {"k_mag": "bright"}}])]),
             fail("photometry k_mag must be a number")),
        _file_case("apogee_good", "astronn_dist", apstar, Outcome(OK), "a good star, as a control", file_name=star),
    ]


def _places() -> list[Case]:
    def folder(root: Path, outside: Path) -> Sent:
        for i in (1, 2):
            spec_lite(_at(root, "folder_input", f"sub/spec-000100-60000-{i}.fits"), seed=i)
        _at(root, "folder_input", "notes.txt").write_text("not a spectrum, not picked up")
        return Sent(files=[root / "folder_input"])

    def empty_folder(root: Path, outside: Path) -> Sent:
        (root / "empty_folder").mkdir()
        (root / "empty_folder" / "README").write_text("nothing here")
        return Sent(files=[root / "empty_folder"])

    def fifo(root: Path, outside: Path) -> Sent:
        path = _at(root, "fifo_input", "spec-000100-60000-1.fits")
        os.mkfifo(path)
        return Sent(files=[path])

    def vanishes(root: Path, outside: Path) -> Sent:
        path = spec_lite(_at(root, "vanishes_before_read", "spec-000100-60000-1.fits"))
        return Sent(files=[path], after_enqueue=path.unlink)

    def dotdot(root: Path, outside: Path) -> Sent:
        spec_lite(outside / "dotdot" / "spec-000100-60000-1.fits")
        return Sent(files=[root / ".." / outside.name / "dotdot" / "spec-000100-60000-1.fits"])

    def absolute_outside(root: Path, outside: Path) -> Sent:
        return Sent(files=[spec_lite(outside / "absolute" / "spec-000100-60000-1.fits")])

    def symlink_out(root: Path, outside: Path) -> Sent:
        return Sent(files=[_outside_symlink(root, outside, "symlink_leaving_root")])

    def symlink_inside(root: Path, outside: Path) -> Sent:
        target = spec_lite(_at(root, "symlink_inside_root", "data/spec-000100-60000-1.fits"))
        link = _at(root, "symlink_inside_root", "spec-link.fits")
        os.symlink(target, link)
        return Sent(files=[link])

    def duplicate(root: Path, outside: Path) -> Sent:
        path = spec_lite(_at(root, "same_file_three_times", "spec-000100-60000-1.fits"))
        return Sent(files=[path, path.relative_to(root), f"{path.parent}/./{path.name}"])

    def non_ascii(root: Path, outside: Path) -> Sent:
        return Sent(files=[spec_lite(_at(root, "non_ascii_path", "spëctra/星/spec-000100-60000-1.fits"))])

    def long_path(root: Path, outside: Path) -> Sent:
        name = "/".join(["d" * 60] * 7) + "/spec-000100-60000-1.fits"  # 452 characters under the case folder
        return Sent(files=[spec_lite(_at(root, "long_path", name))])

    def too_long_path(root: Path, outside: Path) -> Sent:
        name = "/".join(["d" * 200] * 3) + "/spec-000100-60000-1.fits"
        return Sent(files=[spec_lite(_at(root, "too_long_path", name))])

    return [
        Case("folder_input", "bossnet", folder, Outcome(OK, rows=2), "searched for spectrum files"),
        Case("empty_folder", "bossnet", empty_folder, Outcome(REFUSED, "no spectrum files")),
        Case("fifo_input", "bossnet", fifo, Outcome(REFUSED, "FIFO")),
        Case("vanishes_before_read", "bossnet", vanishes, Outcome(RETRIED, "file not found", BOSS_FAIL),
             "listed at enqueue, deleted before the worker reads it"),
        Case("dotdot_path", "bossnet", dotdot, Outcome(REFUSED, "outside the data root")),
        Case("absolute_path_outside", "bossnet", absolute_outside, Outcome(REFUSED, "outside the data root")),
        Case("symlink_leaving_root", "bossnet", symlink_out, Outcome(REFUSED, "leads outside the data root")),
        Case("symlink_inside_root", "bossnet", symlink_inside, Outcome(OK), "the row names the link"),
        Case("same_file_three_times", "bossnet", duplicate, Outcome(OK), "one row"),
        Case("non_ascii_path", "bossnet", non_ascii, Outcome(OK)),
        Case("long_path", "bossnet", long_path, Outcome(OK), "470 characters"),
        Case("too_long_path", "bossnet", too_long_path, Outcome(REFUSED, "references are limited to 480")),
    ]


def _messages() -> list[Case]:
    def message(name: str, refs: Callable[[str], Any], outcome: Outcome, why: str = "", **kw) -> Case:
        def build(root: Path, outside: Path) -> Sent:
            good = spec_lite(_at(root, name, "spec-000100-60000-1.fits")).relative_to(root).as_posix()
            return Sent(messages=[Message(refs(good), **kw)])
        return Case(name, "bossnet", build, outcome, why)

    def special(name: str, make: Callable[[Path], None], text: str) -> Case:
        def build(root: Path, outside: Path) -> Sent:
            path = _at(root, name, "spec-000100-60000-1.fits")
            make(path)
            return Sent(messages=[Message([{"path": path.relative_to(root).as_posix()}])])
        return Case(name, "bossnet", build, Outcome(ROW, text, BOSS_FAIL), "sent by hand: no producer check")

    def symlink_out(root: Path, outside: Path) -> Sent:
        link = _outside_symlink(root, outside, "message_symlink_leaving_root")
        return Sent(messages=[Message([{"path": link.relative_to(root).as_posix(), "hdu": 1, "row": 0}])])

    def oversized(root: Path, outside: Path) -> Sent:
        good = spec_lite(_at(root, "message_oversized", "spec-000100-60000-1.fits")).relative_to(root).as_posix()
        # 12 spectrum keys, over the worker's limit of 8 (SPECQ_MAX_MESSAGE_REFS in the test).
        refs = [{"path": good, "hdu": 1, "row": row} for row in range(12)]
        return Sent(messages=[Message(refs)])

    fail = lambda text: Outcome(ROW, text, BOSS_FAIL)  # noqa: E731
    return [
        message("message_missing_path", lambda good: [{"hdu": 1, "row": 0}], fail("needs a string 'path'")),
        message("message_extra_field", lambda good: [{"path": good, "hdu": 1, "row": 0, "evil": True}],
                fail("unknown reference field")),
        message("message_wrong_type", lambda good: [{"path": good, "hdu": "1", "row": 0}],
                fail("hdu must be a non-negative integer")),
        message("message_not_a_list", lambda good: "spec-000100-60000-1.fits", fail("must be an object")),
        message("message_absolute_path", lambda good: [{"path": "/etc/passwd"}], fail("not absolute")),
        message("message_dotdot", lambda good: [{"path": "../../etc/passwd"}], fail("'..' is not allowed")),
        message("message_path_1mb", lambda good: [{"path": "a" * (1 << 20)}], fail("references are limited")),
        message("message_bad_options", lambda good: [{"path": good, "hdu": 1, "row": 0}], Outcome(OK),
                "draws 'many': the defaults are used", options={"draws": "many"}),
        message("message_options_not_an_object", lambda good: [{"path": good, "hdu": 1, "row": 0}], Outcome(OK),
                "options ['x']: the defaults are used", options=["x"]),
        message("message_pickled", lambda good: [{"path": good, "hdu": 1, "row": 0}],
                Outcome(REJECTED, "pickle", rows=0), serializer="pickle"),
        special("message_names_a_folder", lambda p: p.mkdir(), "a folder"),
        special("message_names_a_fifo", os.mkfifo, "FIFO"),
        Case("message_symlink_leaving_root", "bossnet", symlink_out, fail("resolves outside the data root")),
        Case("message_oversized", "bossnet", oversized, Outcome(ROW, None, None, rows=12),
             "12 references, over the limit of 8: the worker cuts it into messages it may take; "
             "row 0 is computed, rows 1-11 do not exist and are flagged"),
    ]


CASES: list[Case] = _files() + _apogee_files() + _places() + _messages()


def write_catalog(path: Path) -> Path:
    """The corpus's source catalog (CSV text: strings where numbers belong included)."""
    lines = ["apogee_id,k_mag,ebv"] + [",".join(row) for row in CATALOG_ROWS]
    path.write_text("\n".join(lines) + "\n")
    return path


def build_all(root: Path, outside: Path) -> dict[str, Sent]:
    """Write every case under ``root`` (and ``outside``, for what must stay out)."""
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    return {case.name: case.build(root, outside) for case in CASES}


def describe() -> str:
    """The corpus as a table: kind, pipeline, outcome (for reports)."""
    lines = []
    for c in CASES:
        o = c.outcome
        detail = " ".join(x for x in (o.flag or "", repr(o.text) if o.text else "") if x)
        lines.append(f"{c.name:34} {c.pipeline:13} {o.kind:9} {detail}")
    return "\n".join(lines)

