"""An s3:// data root against a local S3-compatible server (moto), where moto is installed."""
from __future__ import annotations

import socket

import numpy as np
import pytest

import s3fs  # noqa: F401  (a test dependency: missing, it fails)
import moto.server as moto_server

from workers import engine  # noqa: E402
from workers.cache import FileCache  # noqa: E402
from workers.refs import SpectrumRef  # noqa: E402
from workers.remote import RemoteRoot  # noqa: E402


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 on a free local port, found by botocore through AWS_ENDPOINT_URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "specq-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "n0t-a-real-s3cr3t")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="sas")
    yield client
    server.stop()


def test_an_s3_root_reads_through_the_cache_and_flags_a_missing_key(s3, tmp_path):
    from specq.testing.synthetic import make_dataset

    truth = make_dataset(tmp_path / "data", n_boss=2, n_apogee=0, seed=9, formats=("spec-lite",))
    path = str(truth["path"][0])
    s3.upload_file(str(tmp_path / "data" / path), "sas", f"dr19/{path}")
    root = RemoteRoot("s3://sas/dr19", FileCache(tmp_path / "cache", 1 << 30), timeout=10.0)

    (job,) = engine.read_jobs(SpectrumRef(path), root, "boss")
    (local,) = engine.read_jobs(SpectrumRef(path), tmp_path / "data", "boss")
    assert job.error is None
    np.testing.assert_array_equal(job.spectrum.flux, local.spectrum.flux)
    assert len(root.cache.entries()) == 1
    cached = root.cache.entries()[0][2]
    (again,) = engine.read_jobs(SpectrumRef(path), root, "boss")
    assert again.error is None and root.cache.entries()[0][2] == cached

    (missing,) = engine.read_jobs(SpectrumRef("boss/spec-1-2-3.fits"), root, "boss")
    assert missing.error == "s3://sas/dr19/boss/spec-1-2-3.fits: HTTP 404 Not Found"
    assert "n0t-a-real-s3cr3t" not in missing.error
