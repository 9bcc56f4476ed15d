import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import RecordingApp
from workers.refs import RefError, SpectrumRef, confine, normalize_path, relative_to_root
from workers.settings import load_settings


def test_key_and_json_round_trip():
    ref = SpectrumRef("a/b/spec.fits", 1, 0, ids={"sdss_id": 5}, photometry={"k_mag": 9.8, "ebv": 0.05})
    assert ref.key == "a/b/spec.fits:1:0"
    again = SpectrumRef.from_json(json.loads(json.dumps(ref.to_json())))
    assert again == ref
    assert SpectrumRef("x.fits").key == "x.fits:*:*"


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x.fits", "a/../../x.fits", "", "   ", "C:\\x.fits", "a\x00b"])
def test_paths_that_leave_the_root_are_refused(bad):
    with pytest.raises(RefError):
        SpectrumRef(bad)


def test_normalize_drops_dots():
    assert normalize_path("./a//b/./c.fits") == "a/b/c.fits"


def test_symlink_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "secret.fits"
    outside.write_text("x")
    os.symlink(outside, root / "link.fits")
    (root / "ok.fits").write_text("y")
    with pytest.raises(RefError, match="outside"):
        SpectrumRef("link.fits").resolve(root)
    assert confine("ok.fits", root) == (root / "ok.fits").resolve()
    with pytest.raises(RefError):
        relative_to_root(root / "link.fits", root)


def test_relative_to_root_accepts_cwd_root_and_absolute(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f.fits").write_text("z")
    monkeypatch.chdir(root / "sub")
    assert relative_to_root("f.fits", root) == "sub/f.fits"
    assert relative_to_root("sub/f.fits", root) == "sub/f.fits"
    assert relative_to_root(root / "sub" / "f.fits", root) == "sub/f.fits"
    with pytest.raises(FileNotFoundError):
        relative_to_root("nope.fits", root)


@pytest.mark.parametrize("data", [
    {"path": "a.fits", "hdu": -1, "row": 0},
    {"path": "a.fits", "hdu": 1, "row": "3"},
    {"path": "a.fits", "hdu": 1, "row": 2**31},
    {"path": "a.fits", "hdu": 10**20, "row": 0},
    {"path": "a.fits", "hdu": 3},
    {"path": "a.fits", "row": 3},
    {"path": 5},
    {"path": "a.fits", "evil": 1},
    {"path": "a.fits", "ids": {"nope": 1}},
    {"path": "a.fits", "photometry": {"k_mag": "bright"}},
    ["a.fits"],
])
def test_malformed_references_are_refused(data):
    with pytest.raises(RefError):
        SpectrumRef.from_json(data)


def test_settings_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "specq.toml"
    cfg.write_text('[specq]\nchunk_size = 8\nbossnet_queue = "fast"\n')
    monkeypatch.setenv("SPECQ_CONFIG", str(cfg))
    monkeypatch.setenv("SPECQ_BOSSNET_QUEUE", "gpu2")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://example:6379/0")
    s = load_settings()
    assert s.chunk_size == 8 and s.queue_for("bossnet") == "gpu2"
    assert s.broker == "redis://example:6379/0" and not s.embedded
    monkeypatch.setenv("SPECQ_BROKER_URL", "redis://other:6379/1")
    assert load_settings().broker == "redis://other:6379/1"
    monkeypatch.delenv("SPECQ_BROKER_URL")
    monkeypatch.delenv("CELERY_BROKER_URL")
    s = load_settings()
    assert s.embedded and s.broker == "filesystem://"
    assert s.database.startswith("sqlite:///") and s.database.endswith("results.sqlite")
    with pytest.raises(ValueError, match="unknown"):
        load_settings(nonsense=1)


def test_importing_tasks_loads_no_model_framework():
    code = ("import sys, tasks, tasks.pipelines, tasks.producer; "
            "print(','.join(m for m in ('torch', 'tensorflow', 'astroNN') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_importing_tasks_builds_no_app_and_reads_no_environment(tmp_path):
    """The app is built on first use; ``celery -A tasks`` and ``tasks.app.app`` still find it."""
    code = textwrap.dedent("""
        import os, sys
        import tasks, tasks.app, tasks.pipelines, tasks.producer, tasks.watch, tasks.lifecycle
        module = sys.modules["tasks.app"]
        assert module._app is None, "no app is built at import"
        assert not os.path.exists(os.environ["SPECQ_STATE_DIR"]), "nothing is created at import"
        from celery.app.utils import find_app
        app = find_app("tasks")
        assert app is tasks.app is module.get_app() and "specq.bossnet" in app.tasks
        assert app.conf.broker_transport == "tasks.embedded:Transport"
        from tasks.app import app as named
        assert named is app
        print("ok")
    """)
    env = {**os.environ, "SPECQ_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert out.stdout.strip() == "ok", out.stderr


def test_tls_urls_verify_the_server_by_default():
    import ssl

    from celery import Celery

    from tasks.app import configure

    app = configure(Celery("t", set_as_current=False),
                    load_settings(broker_url="rediss://:pw@redis.example:6380/0",
                                  result_backend="rediss://:pw@redis.example:6380/1?ssl_cert_reqs=none"))
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert not app.conf.redis_backend_use_ssl  # the URL chose for itself
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost


def test_message_size_is_per_pipeline_unless_one_size_is_set(monkeypatch):
    from workers.settings import load_settings

    for key in ("SPECQ_CHUNK_SIZE", "SPECQ_BOSSNET_CHUNK_SIZE", "SPECQ_ASTRONN_DIST_CHUNK_SIZE", "SPECQ_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    s = load_settings()
    assert (s.chunk_size_for("bossnet"), s.chunk_size_for("astronn_dist")) == (32, 128)
    monkeypatch.setenv("SPECQ_ASTRONN_DIST_CHUNK_SIZE", "64")
    assert load_settings().chunk_size_for("astronn_dist") == 64
    monkeypatch.setenv("SPECQ_CHUNK_SIZE", "5")
    s = load_settings()
    assert (s.chunk_size_for("bossnet"), s.chunk_size_for("astronn_dist")) == (5, 5)


def test_submit_cuts_each_pipeline_into_its_own_message_size(tmp_path, monkeypatch):
    from tasks.producer import submit
    from workers.refs import SpectrumRef
    from workers.settings import load_settings

    monkeypatch.delenv("SPECQ_CHUNK_SIZE", raising=False)
    settings = load_settings(data_root=tmp_path, bossnet_chunk_size=3, astronn_dist_chunk_size=4)
    app = RecordingApp(settings)
    refs = [SpectrumRef(f"s{i}.fits", 1, 0) for i in range(7)]
    submit(refs, "bossnet,astronn_dist", settings=settings, celery_app=app)
    assert sorted((name, len(message)) for name, message in app.sent) == sorted(
        [("specq.bossnet", 3), ("specq.bossnet", 3), ("specq.bossnet", 1), ("specq.astronn_dist", 4),
         ("specq.astronn_dist", 3)])


def test_submit_sends_each_spectrum_to_the_pipelines_that_take_it(tmp_path):
    from specq.testing import synthetic
    from tasks.producer import submit
    from workers.refs import SpectrumRef
    from workers.settings import load_settings

    synthetic.write_spec_lite(tmp_path / "spec-000100-60000-1.fits", teff=5000, logg=4.0, fe_h=0.0, v_r=0.0,
                              snr=30, seed=1)
    synthetic.write_apstar(tmp_path / "apStar-dr17-apo25m-2M00000001+0000001.fits", teff=4800, logg=2.5,
                           fe_h=-0.2, fakemag=400.0, snr=50, seed=2)
    settings = load_settings(data_root=tmp_path)
    app = RecordingApp(settings)
    refs = [SpectrumRef("spec-000100-60000-1.fits", 1, 0), SpectrumRef("apStar-dr17-apo25m-2M00000001+0000001.fits", 1, 0),
            SpectrumRef("missing.fits", 1, 0)]
    submit(refs, settings=settings, celery_app=app)
    by_task = {name: [r["path"] for r in message] for name, message in app.sent}
    assert by_task["specq.bossnet"] == ["spec-000100-60000-1.fits", "missing.fits"]  # the first pipeline says why
    assert by_task["specq.astronn_dist"] == ["apStar-dr17-apo25m-2M00000001+0000001.fits"]


def test_the_kernels_real_path_is_os_paths(tmp_path):
    from workers.refs import _real_path

    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "sub" / "f.fits").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "broken").symlink_to(tmp_path / "nothing")
    (tmp_path / "data" / "up").symlink_to("..")
    for name in ("data", "link/sub/f.fits", "link/sub/../sub/./f.fits", "loop", "loop/x", "broken", "broken/x",
                 "data/up/link/sub", "missing/f.fits", "link//sub/", ""):
        path = os.path.join(str(tmp_path), name)
        assert _real_path(path) == os.path.realpath(path), name


def test_a_root_swapped_for_another_folder_is_resolved_again(tmp_path):
    # The root's real path is kept between references; a rename, a new folder under the
    # root's name or a link pointed elsewhere must send reads to what the name names now.
    first, second = tmp_path / "night1", tmp_path / "night2"
    for folder, text in ((first, "1"), (second, "2")):
        folder.mkdir()
        (folder / "spec.fits").write_text(text)
    root = tmp_path / "root"
    root.symlink_to(first)
    assert confine("spec.fits", root).read_text() == "1"
    root.unlink()
    root.symlink_to(second)
    assert confine("spec.fits", root).read_text() == "2"

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "spec.fits").write_text("old")
    assert confine("spec.fits", plain).read_text() == "old"
    plain.rename(tmp_path / "moved")
    plain.mkdir()
    (plain / "spec.fits").write_text("new")
    assert confine("spec.fits", plain) == plain.resolve() / "spec.fits"
    assert confine("spec.fits", plain).read_text() == "new"


def test_a_reference_names_one_spectrum_or_a_whole_file_within_the_stores_integers():
    with pytest.raises(RefError, match=r"a.fits: give both hdu and row \(one spectrum\) or neither \(the whole "
                                       r"file\), not hdu=3 and row=None"):
        SpectrumRef.from_json({"path": "a.fits", "hdu": 3})
    with pytest.raises(RefError, match=r"row 2147483648 is out of range \(at most 2147483647"):
        SpectrumRef("a.fits", 1, 2**31)
    assert SpectrumRef.from_json({"path": "a.fits", "hdu": 1, "row": 2**31 - 1}).key == "a.fits:1:2147483647"


def test_a_name_that_is_not_utf8_text_is_refused_whatever_its_surrogates():
    """Bytes of a file name (lone surrogates U+DC80–DCFF) and any other lone surrogate, as JSON can carry."""
    for path, shown in (("a\udcff.fits", "a\\xff.fits"), ("a\ud800.fits", "a\\ud800.fits")):
        with pytest.raises(RefError, match=f"^{re.escape(shown)}: the name is not UTF-8 text; rename the file$"):
            SpectrumRef.from_json({"path": path})


def test_a_local_run_takes_paths_longer_than_the_stores_key(tmp_path):
    """The store's 480 characters limit what is enqueued; specq run and predict write no store."""
    from specq.testing.synthetic import write_spec_lite
    from tasks.producer import InputError, plan_local, submit
    from workers.settings import load_settings

    folder = tmp_path.joinpath(*["a-long-folder-name-" + "x" * 40] * 9)
    folder.mkdir(parents=True)
    write_spec_lite(folder / "spec-1-2-3.fits", teff=5000, logg=4.0, fe_h=0.0, v_r=0.0, snr=30, seed=1)
    name = (folder / "spec-1-2-3.fits").relative_to(tmp_path).as_posix()
    assert len(name) > 480
    refs, _ = plan_local([folder / "spec-1-2-3.fits"], ["bossnet"], tmp_path)
    assert [r.path for r in refs["bossnet"]] == [name]
    with pytest.raises(InputError, match="references are limited to 480"):
        submit([str(folder / "spec-1-2-3.fits")], "bossnet", settings=load_settings(data_root=tmp_path))
