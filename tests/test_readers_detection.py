"""Telling the format of a file: FILETYPE card, layout, file name, and a name and content that disagree."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from astropy.io import fits

import workers.readers as readers
from reader_files import AVAILABLE, gzip_file
from reader_files import files  # noqa: F401 (a fixture)
from workers.readers import FormatMismatchError, detect_format, list_spectra, read_spectrum
from workers.spectrum import SpectrumError


# --------------------------------------------------------------------------- detection
def test_detect_format_from_filetype_card_and_unknown_layouts(files, tmp_path):
    renamed = tmp_path / "whatever.fits"
    shutil.copy(files["star_both"], renamed)
    assert detect_format(renamed) == "mwmStar"  # from the columns, not the name
    with fits.open(files["lite"]) as hdul:
        hdul[0].header["FILETYPE"] = "mwmVisit"
        hdul.writeto(tmp_path / "typed.fits", checksum=True)
    assert detect_format(tmp_path / "typed.fits") == "mwmVisit"

    image = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4)))]).writeto(image)
    with pytest.raises(SpectrumError, match="unknown file layout"):
        detect_format(image)
    with pytest.raises(SpectrumError, match="unknown file layout"):
        list_spectra(image, "boss")


def test_detect_format_falls_back_to_the_file_name(tmp_path):
    path = tmp_path / "apStar-1.0-apo25m-2M00000003+0000003.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("X", "E", array=[1.0])])]).writeto(path)
    assert detect_format(path) == "apStar"
    with pytest.raises(SpectrumError, match="HDU 2 does not exist"):
        read_spectrum(path, 1, 0)


# --------------------------------------------------------------------------- name and content
def test_name_and_content_that_disagree_are_refused_naming_both(files, tmp_path):
    """An mwmVisit file named mwmStar-… must not be read (nor refused) as either product."""
    misnamed = tmp_path / "mwmStar-0.8.1-99560000.fits"
    shutil.copy(files["visit"], misnamed)
    for backend in AVAILABLE:
        for call in (lambda: detect_format(misnamed, backend=backend),
                     lambda: list_spectra(misnamed, "apogee", backend=backend),
                     lambda: list_spectra(misnamed, "boss", backend=backend),
                     lambda: read_spectrum(misnamed, 1, 0, backend=backend)):
            with pytest.raises(FormatMismatchError) as caught:
                call()
            message = str(caught.value)
            assert str(misnamed) in message
            assert "the file name says mwmStar but the content is mwmVisit" in message
            assert "has the mwmVisit column(s)" in message and "mjd" in message
            assert "not valid input" not in message
    # Other pairs: a spec-lite named like an apStar, an apStar named like a spec-lite.
    lite_as_apstar = tmp_path / "apStar-1.0-apo25m-2M00000001+0000001.fits.gz"
    gzip_file(files["lite"], lite_as_apstar)
    with pytest.raises(FormatMismatchError, match="the file name says apStar but the content is spec-lite "
                                                  r"\(HDU 1 is a COADD table\)"):
        list_spectra(lite_as_apstar, "apogee")
    apstar_as_lite = tmp_path / "spec-1-60000-2.fits"
    shutil.copy(files["apstar1"], apstar_as_lite)
    with pytest.raises(FormatMismatchError, match="says spec-lite but the content is apStar"):
        read_spectrum(apstar_as_lite, 1, 0)


def test_name_and_content_mismatch_becomes_a_flagged_row(files, tmp_path):
    """Producer → worker: the file is sent as a file-level reference and ends as one flagged row."""
    from tasks.producer import expand_file
    from workers import engine

    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(files["visit"], root / "mwmStar-0.8.1-99560000.fits")
    expanded = expand_file("mwmStar-0.8.1-99560000.fits", ["astronn_dist"], root, backend="native")
    [ref] = expanded.refs["astronn_dist"]
    assert (ref.path, ref.hdu, ref.row) == ("mwmStar-0.8.1-99560000.fits", None, None)
    assert any("the file name says mwmStar but the content is mwmVisit" in note for note in expanded.notes)
    jobs = engine.read_jobs(ref, root, "apogee", backend="native")
    [row] = engine.run_jobs(engine.unloaded_pipeline("astronn_dist"), jobs)
    assert row["flag_bad"] and row["path"] == "mwmStar-0.8.1-99560000.fits"
    assert "the file name says mwmStar but the content is mwmVisit" in row["error"]


def test_a_spec_lite_cut_after_its_primary_header_is_one_flagged_row_among_every_pipeline(files, tmp_path):
    """Whole FITS with no spectrum HDU: BossNet fails on it and every other pipeline finds
    nothing of its own there; the file still ends as one flagged row, BossNet's."""
    from tasks.producer import expand_file
    from workers import engine, registry

    root = tmp_path / "data"
    root.mkdir()
    with fits.open(files["lite"]) as hdul:
        cut = hdul[1].fileinfo()["hdrLoc"]
    name = "spec-000100-60000-1.fits"
    (root / name).write_bytes(files["lite"].read_bytes()[:cut])
    expanded = expand_file(name, list(registry.pipelines()), root, backend="native")
    sent = {p: [(r.path, r.hdu, r.row) for r in refs] for p, refs in expanded.refs.items() if refs}
    assert sent == {"bossnet": [(name, None, None)]}
    jobs = engine.read_jobs(expanded.refs["bossnet"][0], root, "boss", backend="native")
    [row] = engine.run_jobs(engine.unloaded_pipeline("bossnet"), jobs)
    assert row["flag_bad"] and row["path"] == name and "HDU 1 does not exist" in row["error"]


def _with_its_boss_hdu_changed(source, path) -> int:
    """``source`` copied to ``path`` with one byte of its BOSS HDU's data changed (its checksum
    then fails); returns that HDU's number."""
    data = bytearray(source.read_bytes())
    with fits.open(source) as hdul:
        boss = next(i for i, h in enumerate(hdul) if h.name.startswith("BOSS") and h.data is not None and len(h.data))
        data[hdul[boss].fileinfo()["datLoc"] + 100] ^= 0xFF
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return boss


def test_a_part_of_a_file_that_fails_is_a_flagged_row_beside_the_spectra_read(files, tmp_path):
    """An mwmStar whose BOSS HDU fails its checksum: AstroNN gets the APOGEE spectrum and
    BossNet a flagged row for the file, naming the HDU."""
    from tasks.producer import expand_file
    from workers import engine

    root = tmp_path / "data"
    name = "mwmStar-0.8.1-99560001.fits"
    boss = _with_its_boss_hdu_changed(files["star_both"], root / name)
    expanded = expand_file(name, ["bossnet", "astronn_dist"], root, backend="native")
    [file_ref] = expanded.refs["bossnet"]
    assert (file_ref.hdu, file_ref.row) == (None, None) and expanded.refs["astronn_dist"]
    assert all(r.hdu is not None for r in expanded.refs["astronn_dist"])
    [row] = engine.run_jobs(engine.unloaded_pipeline("bossnet"), engine.read_jobs(file_ref, root, "boss"))
    assert row["flag_bad"] and f"HDU {boss}" in row["error"] and "checksum mismatch" in row["error"]


def test_a_broken_boss_only_mwmstar_is_one_row_of_the_boss_pipeline(files, tmp_path):
    """The APOGEE pipelines list the file and find nothing of theirs: no row is theirs to write."""
    from tasks.producer import expand_file
    from workers import registry

    root = tmp_path / "data"
    name = "mwmStar-0.8.1-99560003.fits"
    _with_its_boss_hdu_changed(files["star_boss"], root / name)
    expanded = expand_file(name, list(registry.pipelines()), root, backend="native")
    assert {p: [r.key for r in refs] for p, refs in expanded.refs.items() if refs} == {"bossnet": [f"{name}:*:*"]}


def test_a_half_copied_file_goes_to_every_pipeline_of_its_product(files, tmp_path):
    """Enqueued while its copy runs: each pipeline of the product the name gives takes the
    whole file, and reads all of its spectra once the copy is done."""
    from tasks.producer import expand_file
    from workers import engine, registry

    root = tmp_path / "data"
    root.mkdir()
    name = "mwmStar-0.8.1-99560002.fits"
    whole = files["star_both"].read_bytes()
    (root / name).write_bytes(whole[:len(whole) // 2])
    expanded = expand_file(name, list(registry.pipelines()), root, backend="native")
    sent = {p: [(r.hdu, r.row) for r in refs] for p, refs in expanded.refs.items() if refs}
    assert sent == {p: [(None, None)] for p in ("bossnet", "astronn_dist", "bossnet_apogee")}
    [note] = expanded.notes  # the reason once, not once a pipeline
    assert note.startswith(f"{name}: every pipeline: ") and "truncated" in note
    (root / name).write_bytes(whole)
    for pipeline, [ref] in expanded.refs.items():
        jobs = engine.read_jobs(ref, root, registry.get(pipeline).instrument, backend="native")
        assert jobs and all(job.error is None for job in jobs), (pipeline, [job.error for job in jobs])
        expected = list_spectra(root / name, registry.get(pipeline).instrument)
        assert [(j.ref.hdu, j.ref.row) for j in jobs] == [(s.hdu, s.row) for s in expected]


def test_folder_patterns_are_the_names_detection_knows():
    """A file a folder search or ``specq watch`` picks up is one the name alone would identify."""
    import fnmatch

    from workers.readers.formats import FILE_PATTERNS, _from_name

    names = {"spec-015000-59000-4593.fits": "spec-lite", "mwmVisit-0.8.1-99560000.fits": "mwmVisit",
             "mwmStar-0.8.1-99560000.fits.gz": "mwmStar", "asStar-dr17-lco25m-2M00000001+0000001.fits": "apStar"}
    for name, product in names.items():
        assert any(fnmatch.fnmatch(name, p) for p in FILE_PATTERNS), name
        assert _from_name(name.removesuffix(".gz")).name == product
    for name in ("spec-1.fits", "mwmStar-0.8.1-1.fits.tmp", "notes.fits"):
        assert not any(fnmatch.fnmatch(name, p) for p in FILE_PATTERNS), name
