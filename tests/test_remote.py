"""URL data roots against a real HTTP server started here (Range, ETag, 404, 5xx, dropped connections)."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

import fsspec  # noqa: F401  (a test dependency: missing, it fails)
import aiohttp  # noqa: F401  (a test dependency: missing, it fails)

from specq.testing.http_server import DROP, DROP_BODY, SLOW, STALL, ArchiveServer  # noqa: E402
from workers import engine, readers  # noqa: E402
from workers.cache import FileCache  # noqa: E402
from workers.refs import RefError, SpectrumRef  # noqa: E402
from workers.remote import RemoteRoot, classify, redact  # noqa: E402


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A small data set served over HTTP: (folder, server, truth)."""
    from specq.testing.synthetic import make_dataset

    folder = tmp_path_factory.mktemp("archive")
    truth = make_dataset(folder, n_boss=12, n_apogee=2, seed=5)
    assert len(_files(truth, "spec-lite")) >= 3
    with ArchiveServer(folder, stall_s=3.0) as server:
        yield folder, server, truth


def _root(server, tmp_path, **kw) -> RemoteRoot:
    kw.setdefault("timeout", 10.0)
    kw.setdefault("range_bytes", 1 << 30)
    cache = FileCache(tmp_path / "cache", kw.pop("cache_bytes", 1 << 30), kw.pop("in_use_s", 60.0))
    return RemoteRoot(server.url + "/", cache, **kw)


def _files(truth, fmt=None) -> list[str]:
    return sorted({str(p) for p, f in zip(truth["path"], truth["format"]) if fmt is None or f == fmt})


def test_a_url_root_reads_what_the_folder_holds(archive, tmp_path):
    folder, server, truth = archive
    root = _root(server, tmp_path)
    for path, instrument in sorted({(str(p), str(i)) for p, i in zip(truth["path"], truth["instrument"])}):
        remote = engine.read_jobs(SpectrumRef(path), root, instrument)
        local = engine.read_jobs(SpectrumRef(path), folder, instrument)
        assert [j.ref.key for j in remote] == [j.ref.key for j in local] and remote
        for r, lo in zip(remote, local):
            assert r.error is None and lo.error is None
            np.testing.assert_array_equal(r.spectrum.flux, lo.spectrum.flux)
            assert r.spectrum.path == path  # rows name the reference, not the cached copy


def test_the_cache_is_hit_on_the_second_pass_and_refetched_when_the_file_changes(archive, tmp_path):
    folder, server, truth = archive
    root = _root(server, tmp_path)
    path = _files(truth, "spec-lite")[0]
    gets = server.count("GET", path)
    engine.read_jobs(SpectrumRef(path), root, "boss")
    assert server.count("GET", path) == gets + 1
    engine.read_jobs(SpectrumRef(path), root, "boss")
    engine.read_jobs(SpectrumRef(path, 1, 0), root, "boss")
    assert server.count("GET", path) == gets + 1, "a cached file with the same ETag and size is not fetched again"
    # The archive replaces the file: another ETag → fetched again.
    data = (folder / path).read_bytes()
    st = (folder / path).stat()
    os.utime(folder / path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    engine.read_jobs(SpectrumRef(path), root, "boss")
    assert server.count("GET", path) == gets + 2
    assert (folder / path).read_bytes() == data


def test_the_cache_stays_within_its_bound(archive, tmp_path):
    _, server, truth = archive
    files = _files(truth, "spec-lite")[:3]
    size = os.path.getsize(archive[0] / files[0])
    root = _root(server, tmp_path, cache_bytes=int(size * 1.5), in_use_s=0.0)
    for path in files:
        assert engine.read_jobs(SpectrumRef(path), root, "boss")[0].error is None
    assert root.cache.size() <= size * 1.5
    assert len(root.cache.entries()) == 1  # the last one read


def test_a_big_file_is_read_by_ranges(archive, tmp_path, monkeypatch):
    """Only the blocks the reader needs travel: headers and the rows of the HDUs read.

    With checksums verified, each HDU read travels whole (its DATASUM covers all of it):
    this test reads without them, as ``SPECQ_VERIFY_CHECKSUMS=0`` does."""
    import workers.remote as remote
    from specq.testing.synthetic import write_apstar

    monkeypatch.setenv("SPECQ_VERIFY_CHECKSUMS", "0")
    monkeypatch.setattr(remote, "_BLOCK", 16 << 10)
    folder, server, _ = archive
    path = "big/apStar-1.0-apo25m-2M00000042+0000001.fits"
    (folder / "big").mkdir(exist_ok=True)
    write_apstar(folder / path, teff=4800, logg=2.5, fe_h=-0.2, fakemag=9.0, snr=80.0, seed=1, nvisits=30,
                 apogee_id="2M00000042+0000001")
    size = os.path.getsize(folder / path)
    root = _root(server, tmp_path, range_bytes=1 << 20)
    before = len(server.requests)
    (job,) = engine.read_jobs(SpectrumRef(path), root, "apogee")
    assert job.error is None
    local = readers.read_spectrum(folder / path, job.ref.hdu, job.ref.row)
    np.testing.assert_array_equal(job.spectrum.flux, local.flux)
    ranges = [r for m, p, r in server.requests[before:] if m == "GET" and p == path]
    assert ranges and all(r and r.startswith("bytes=") for r in ranges)
    fetched = sum(int(r[6:].split("-")[1]) - int(r[6:].split("-")[0]) + 1 for r in ranges)
    assert size > 2 << 20 and fetched < size / 4, (fetched, size)
    assert root.cache.entries() == []  # nothing fetched whole


def test_404_and_403_are_flagged_rows_naming_the_url_and_status(archive, tmp_path):
    _, server, truth = archive
    root = _root(server, tmp_path)
    (missing,) = engine.read_jobs(SpectrumRef("boss/spec-1-2-3.fits"), root, "boss")
    assert missing.error == f"{server.url}/boss/spec-1-2-3.fits: HTTP 404 Not Found"
    server.always("boss/spec-4-5-6.fits", 403)
    (forbidden,) = engine.read_jobs(SpectrumRef("boss/spec-4-5-6.fits"), root, "boss")
    assert forbidden.error == f"{server.url}/boss/spec-4-5-6.fits: HTTP 403 Forbidden"


@pytest.mark.parametrize("actions, says", [
    ((503, 503), "HTTP 503 Service Unavailable"),  # the size asked with HEAD, then with GET
    ((None, 502), "HTTP 502 Bad Gateway"),  # the size known, the file's GET fails
    ((None, DROP_BODY), "ContentLengthError"),  # the connection drops half way through the file
    ((DROP,) * 4, "ServerDisconnectedError"),  # dropped before any answer (aiohttp retries once)
    ((None, STALL), "no answer in time (timeout)"),
])
def test_a_5xx_timeout_or_dropped_connection_is_transient(archive, tmp_path, actions, says):
    _, server, truth = archive
    root = _root(server, tmp_path, timeout=1.0)
    path = _files(truth, "spec-lite")[1]
    server.fail(path, *actions)
    try:
        with pytest.raises(readers.TransientReadError, match=re.escape(says)):
            engine.read_jobs(SpectrumRef(path), root, "boss")
        assert root.cache.entries() == [], "nothing half-fetched stays in the cache"
    finally:
        server.clear(path)  # what the client did not ask for
    # The queue's next attempt reads it.
    assert engine.read_jobs(SpectrumRef(path), root, "boss")[0].error is None


def test_a_download_that_keeps_coming_is_not_cut_by_the_timeout(archive, tmp_path):
    """The timeout bounds a silence, not a whole download: a big file on a slow link arrives."""
    _, server, truth = archive
    root = _root(server, tmp_path, timeout=1.0)
    path = _files(truth, "spec-lite")[0]
    server.fail(path, None, SLOW)  # the size asked, then the file in ten pieces over ~3 s
    before = len(server.requests)
    try:
        (spectrum,) = engine.read_jobs(SpectrumRef(path), root, "boss")
    finally:
        server.clear(path)
    assert spectrum.error is None
    assert [r for r in server.requests[before:] if r[1] == path and r[0] == "GET"] == [("GET", path, None)]


def test_on_the_last_attempt_a_5xx_is_the_spectrums_flagged_row(archive, tmp_path):
    _, server, truth = archive
    root = _root(server, tmp_path)
    path = _files(truth, "spec-lite")[2]
    server.fail(path, 503, 503)
    (job,) = engine.read_jobs(SpectrumRef(path), root, "boss", last_attempt=True)
    assert "still unreadable on the last attempt" in job.error and "HTTP 503" in job.error


@pytest.mark.parametrize("path", ["../etc/passwd", "a/../../b.fits", "%2e%2e/secret.fits", "a/%2E%2e/b.fits",
                                  "..%2fsecret.fits", "a%2Fb/..%5c..%5cx.fits", "/etc/passwd",
                                  "https://evil.example/spec-1-2-3.fits", "http:/evil/x.fits", "//evil/x.fits",
                                  "a/%00.fits"])
def test_a_reference_never_leaves_a_url_root(tmp_path, path):
    root = RemoteRoot("https://archive.example/sas", FileCache(tmp_path, 1))
    with pytest.raises(RefError):
        root.url_of(path)


def test_odd_characters_are_names_under_the_root(tmp_path):
    root = RemoteRoot("https://archive.example/sas/", FileCache(tmp_path, 1))
    assert root.url_of("dr19/a b#c?d=1.fits") == "https://archive.example/sas/dr19/a%20b%23c%3Fd%3D1.fits"
    assert root.url_of("dr19/apStar-1.4-apo25m-2M00+01.fits").endswith("/dr19/apStar-1.4-apo25m-2M00%2B01.fits")
    assert root.url_of("x%41.fits") == "https://archive.example/sas/x%2541.fits"  # a % is a character, not a code


def test_credentials_never_appear_in_errors_or_status(archive, tmp_path):
    from specq.status import render
    from workers.settings import load_settings

    _, server, truth = archive
    secret_root = server.url.replace("http://", "http://reader:s3cr3t@") + "/?token=t0k3n"
    assert "s3cr3t" not in redact(secret_root) and "t0k3n" not in redact(secret_root)
    root = RemoteRoot(secret_root.split("?")[0], FileCache(tmp_path / "c", 1 << 30), timeout=1.0)
    (job,) = engine.read_jobs(SpectrumRef("boss/spec-7-8-9.fits"), root, "boss")
    assert "HTTP 404" in job.error and "s3cr3t" not in job.error and "***@" in job.error
    path = _files(truth, "spec-lite")[0]
    server.fail(path, DROP_BODY, DROP_BODY)
    with pytest.raises(readers.TransientReadError) as caught:
        engine.read_jobs(SpectrumRef(path), root, "boss")
    assert "s3cr3t" not in str(caught.value)
    server.clear(path)

    class Leaky(Exception):
        pass

    text = str(classify(Leaky("GET http://reader:s3cr3t@host/x?sig=abc failed"), "https://host/x"))
    assert "s3cr3t" not in text and "sig=abc" not in text
    settings = load_settings(data_root=secret_root, database_url=f"sqlite:///{tmp_path / 'r.sqlite'}")
    shown = render({"broker": "b", "database": "d", "data_root": redact(str(settings.data_root))})
    assert "data:" in shown and "s3cr3t" not in shown and "t0k3n" not in shown


def test_the_cache_writes_no_credentials_to_disk(archive, tmp_path):
    import json

    _, server, truth = archive
    path = _files(truth, "spec-lite")[0]
    root = RemoteRoot(server.url.replace("http://", "http://reader:s3cr3t@") + "/", FileCache(tmp_path / "c", 1 << 30),
                      timeout=10.0, range_bytes=1 << 30)
    (job,) = engine.read_jobs(SpectrumRef(path), root, "boss")
    assert job.error is None
    (meta,) = (tmp_path / "c").glob("??/*/.meta.json")
    assert json.loads(meta.read_text())["url"].startswith("http://***@")
    for written in (tmp_path / "c").rglob("*"):
        assert "s3cr3t" not in written.name
        assert not written.is_file() or b"s3cr3t" not in written.read_bytes()
    # the entry still matches its URL: the second read is a hit, not a second download
    gets = server.count("GET")
    engine.read_jobs(SpectrumRef(path), root, "boss")
    assert server.count("GET") == gets


def test_the_cache_removes_what_a_crashed_fetch_left(tmp_path):
    from workers.cache import STALE_PART_S

    cache = FileCache(tmp_path / "c", 1 << 30)
    entry = cache.entry("http://host/a/spec.fits")
    entry.parent.mkdir(parents=True)
    stale, fresh = entry.parent / ".part-abc", entry.parent / ".part-def"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y" * 100)
    old = stale.stat().st_mtime - STALE_PART_S - 10
    os.utime(stale, (old, old))
    cache.store("http://host/b/spec.fits", None, 3, lambda local: open(local, "wb").write(b"abc"))
    assert not stale.exists() and fresh.exists()  # a live fetch's file is left alone


def test_settings_take_url_roots_and_refuse_other_schemes(tmp_path):
    from workers.remote import data_root
    from workers.settings import load_settings

    settings = load_settings(data_root="https://data.sdss.org/sas/", cache_dir=str(tmp_path / "c"), cache_gb="0.5")
    root = data_root(settings)
    assert isinstance(root, RemoteRoot) and root.url == "https://data.sdss.org/sas"
    assert root.cache.folder == tmp_path / "c" and root.cache.max_bytes == 500_000_000
    assert data_root(settings) is root  # one per process: connections and cache reused
    with pytest.raises(ValueError, match="ftp"):
        load_settings(data_root="ftp://archive.example/sas")


def test_watch_refuses_a_url_root(tmp_path):
    from tasks.watch import Watcher
    from workers.settings import load_settings

    settings = load_settings(data_root="https://data.sdss.org/sas", state_dir=tmp_path)
    with pytest.raises(ValueError, match="data root is a URL"):
        Watcher([tmp_path], "bossnet", settings, events=False, submit=lambda *a, **k: None)


def test_two_threads_filling_the_cache_with_one_file_both_read_it(archive, tmp_path, monkeypatch):
    """Readers in threads (``--reader-kind thread``, a threads worker) may fetch one file at once."""
    import threading

    folder, server, truth = archive
    root = _root(server, tmp_path)
    path = _files(truth, "spec-lite")[0]
    import workers.cache as cache

    both_written = threading.Barrier(2, timeout=20)

    class OsBothWrittenFirst:
        """``os`` for the cache, where each thread's record moves into place once both wrote theirs."""

        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            if os.path.basename(dst) == ".meta.json":
                both_written.wait()
            os.replace(src, dst)

    monkeypatch.setattr(cache, "os", OsBothWrittenFirst())
    jobs = [None, None]

    def read(i):
        jobs[i] = engine.read_jobs(SpectrumRef(path), root, "boss")

    threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert [[j.error for j in job] for job in jobs] == [[None], [None]]
    cached = root.cache.lookup(root.url_of(path), *_etag_and_size(root, path))
    assert cached.read_bytes() == (folder / path).read_bytes()


def _etag_and_size(root, path):
    from workers.remote import _version

    info = root.fs.info(root.url_of(path))
    return _version(info), info["size"]


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), FileNotFoundError(2, "No such file"),
                                   OSError(28, "No space left on device")])
def test_a_cache_folder_that_cannot_take_the_file_is_not_an_http_status(archive, tmp_path, monkeypatch, error):
    """A read-only, vanished or full cache folder is the worker's problem, not the archive's:
    retried, then flagged naming the cache, never an "HTTP 403/404" row."""
    import workers.cache as cache

    _, server, truth = archive
    root = _root(server, tmp_path)
    path = _files(truth, "spec-lite")[0]

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(cache.tempfile, "mkstemp", refuse)
    with pytest.raises(readers.TransientReadError) as caught:
        engine.read_jobs(SpectrumRef(path), root, "boss")
    assert "HTTP 4" not in str(caught.value) and "cache" in str(caught.value), str(caught.value)
    (job,) = engine.read_jobs(SpectrumRef(path), root, "boss", last_attempt=True)
    assert "HTTP 4" not in job.error and str(root.cache.folder) in job.error and error.strerror in job.error


@pytest.mark.parametrize("checksums", ["0", "1"])
def test_a_file_replaced_between_two_range_reads_is_retried_not_mixed(archive, tmp_path, monkeypatch, checksums):
    """The archive replaces a file while a worker reads it by ranges: the read is retried
    (TransientReadError), never a spectrum made of both versions nor a checksum failure."""
    import workers.remote as remote
    from specq.testing.synthetic import write_apstar

    monkeypatch.setenv("SPECQ_VERIFY_CHECKSUMS", checksums)
    monkeypatch.setattr(remote, "_BLOCK", 16 << 10)
    folder, server, _ = archive
    path = f"changing/apStar-1.0-apo25m-2M00000043+0000001-{checksums}.fits"
    (folder / "changing").mkdir(exist_ok=True)

    def write(seed):
        write_apstar(folder / path, teff=4800 + seed, logg=2.5, fe_h=-0.2, fakemag=9.0, snr=80.0, seed=seed,
                     nvisits=30, apogee_id="2M00000043+0000001")
        st = (folder / path).stat()
        os.utime(folder / path, ns=(st.st_atime_ns, st.st_mtime_ns + seed * 10**9))  # a new ETag
        return readers.read_spectrum(folder / path, 1, 0)

    write(1)
    root = _root(server, tmp_path, range_bytes=1 << 20)
    read_range, replaced = root.read_range, []

    def then_replace(*args):
        data = read_range(*args)
        if not replaced:
            replaced.append(write(2))
        return data

    monkeypatch.setattr(root, "read_range", then_replace)
    with pytest.raises(readers.TransientReadError, match="changed"):
        engine.read_jobs(SpectrumRef(path, 1, 0), root, "apogee")
    (job,) = engine.read_jobs(SpectrumRef(path, 1, 0), root, "apogee")  # the queue's next attempt
    assert job.error is None
    np.testing.assert_array_equal(job.spectrum.flux, replaced[0].flux)


def test_an_archive_whose_etags_are_not_stable_is_read_without_if_match(archive, tmp_path, monkeypatch, caplog):
    """Mirrors behind one name may give one unchanged file other ETags: a 412 for a file whose
    size and Last-Modified are as located gives up If-Match (said once), not every read."""
    import logging

    import workers.remote as remote

    monkeypatch.setattr(remote, "_BLOCK", 16 << 10)
    _, server, truth = archive
    whole, ranged = _root(server, tmp_path / "a"), _root(server, tmp_path / "b", range_bytes=1 << 10)
    server.unstable_etags = True
    try:
        with caplog.at_level(logging.WARNING, logger="workers.remote"):
            for root in (whole, ranged):
                for path in _files(truth, "spec-lite")[:2]:
                    (job,) = engine.read_jobs(SpectrumRef(path), root, "boss")
                    assert job.error is None
    finally:
        server.unstable_etags = False
    said = [r.getMessage() for r in caplog.records if "ETags are not stable" in r.getMessage()]
    assert len(said) == 2, said  # once for each root


def test_an_archive_that_ignores_range_still_serves_a_big_file(archive, tmp_path, monkeypatch):
    """A plain server (``python -m http.server``) answers a range request with the whole file
    (200): the file is read from that answer, once, not retried until it is flagged."""
    import workers.remote as remote
    from specq.testing import http_server
    from specq.testing.synthetic import write_apstar

    monkeypatch.setattr(remote, "_BLOCK", 16 << 10)
    folder = tmp_path / "plain"
    path = "apStar-1.0-apo25m-2M00000044+0000001.fits"
    folder.mkdir()
    write_apstar(folder / path, teff=4800, logg=2.5, fe_h=-0.2, fakemag=9.0, snr=80.0, seed=3, nvisits=30,
                 apogee_id="2M00000044+0000001")

    class IgnoresRange(http_server._Handler):
        def _serve(self, body):
            del self.headers["Range"]
            super()._serve(body)

    server = http_server.ArchiveServer(folder)
    server.RequestHandlerClass = IgnoresRange
    with server:
        root = _root(server, tmp_path, range_bytes=1 << 20)
        (job,) = engine.read_jobs(SpectrumRef(path, 1, 0), root, "apogee")
        assert job.error is None
        np.testing.assert_array_equal(job.spectrum.flux, readers.read_spectrum(folder / path, 1, 0).flux)
        assert server.count("GET", path) == 1, "the whole file, sent once, is kept"
