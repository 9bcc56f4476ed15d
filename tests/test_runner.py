"""The task body without a broker: an unforeseen error still leaves one flagged row per spectrum."""
import platform
from types import SimpleNamespace

import pytest

from workers.settings import load_settings
from tasks import runner
from workers import engine
from workers.store import ResultStore


class FakeTask:
    def __init__(self, settings):
        self.app = SimpleNamespace(specq_settings=settings)
        self.request = SimpleNamespace(id="task-1", retries=0, hostname="test@host")

    def retry(self, exc=None, countdown=None, max_retries=None):  # pragma: no cover - must not happen here
        raise AssertionError(f"unexpected retry for {exc!r}")


def test_unexpected_error_becomes_flagged_rows(tmp_path, monkeypatch):
    settings = load_settings(data_root=tmp_path, database_url=f"sqlite:///{tmp_path / 'r.sqlite'}")

    def boom(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(engine, "process", boom)
    refs = [{"path": "a.fits", "hdu": 1, "row": 0}, {"path": "b.fits", "hdu": 1, "row": 0}, {"path": "../x"}]
    summary = runner.run_task(FakeTask(settings), "bossnet", refs, {"draws": 1})
    rows = {r["spectrum_key"]: r for r in ResultStore(settings.database).rows("bossnet")}
    assert summary["rows"] == 3 and len(rows) == 3
    assert "a bug" in rows["a.fits:1:0"]["error"] and rows["a.fits:1:0"]["result_flags"] & 1
    invalid = [r for k, r in rows.items() if k.startswith("invalid:")]
    assert len(invalid) == 1 and "invalid reference" in invalid[0]["error"]
    assert all(r["flag_bad"] and r["worker"] == "test@host" for r in rows.values())


@pytest.mark.parametrize("attempt,low,high", [(0, 1.0, 3.0), (3, 8.0, 24.0), (20, 60.0, 180.0)])
def test_backoff_grows_with_jitter_and_a_cap(attempt, low, high):
    waits = [runner.backoff(attempt) for _ in range(200)]
    assert low <= min(waits) and max(waits) <= high and len(set(waits)) > 1


def test_engine_keeps_freed_memory_for_reuse_on_glibc():
    # mallopt's own success on glibc (False would mean it refused the thresholds); elsewhere
    # there is no such setting and the call says so instead of failing.
    assert engine.keep_freed_memory() == (platform.libc_ver()[0] == "glibc")


def test_two_messages_with_different_options_run_concurrently_on_one_warm_model(tmp_path):
    """Draws and seed travel with each call: concurrent tasks sharing the warm model keep their own."""
    import threading

    from specq.testing.synthetic import write_spec_lite

    root = tmp_path / "data"
    root.mkdir()
    for i, name in enumerate(("a.fits", "b.fits")):
        write_spec_lite(root / name, teff=5200 + 400 * i, logg=4.2, fe_h=-0.3, v_r=5.0, snr=25, seed=i)
    messages = {"a.fits": {"draws": 3, "seed": 11}, "b.fits": {"draws": 9, "seed": 22}}

    def run(db: str, names, together: bool) -> dict:
        settings = load_settings(data_root=root, database_url=f"sqlite:///{tmp_path / db}")
        start = threading.Barrier(len(names) if together else 1)

        def one(name):
            start.wait()
            task = FakeTask(settings)
            task.request = SimpleNamespace(id=f"task-{name}", retries=0, hostname="test@host")
            runner.run_task(task, "bossnet", [{"path": name, "hdu": 1, "row": 0}], messages[name])

        if together:
            threads = [threading.Thread(target=one, args=(n,)) for n in names]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for n in names:
                one(n)
        return {r["path"]: r for r in ResultStore(settings.database).rows("bossnet")}

    alone = run("alone.sqlite", list(messages), together=False)
    pipeline = engine.get_pipeline("bossnet", load_settings())
    assert pipeline.defaults.draws == 20  # the messages' options never landed on the shared model
    for attempt in range(3):
        together = run(f"together-{attempt}.sqlite", list(messages), together=True)
        for name in messages:
            for field in ("teff", "e_teff", "logg", "e_logg", "fe_h", "e_fe_h", "bn_v_r", "e_bn_v_r"):
                assert together[name][field] == alone[name][field], (name, field)
    assert alone["a.fits"]["e_teff"] != alone["b.fits"]["e_teff"]
    assert pipeline.defaults.draws == 20


def test_a_retry_the_broker_refuses_before_any_row_sends_the_message_back(tmp_path):
    from celery.exceptions import Reject

    settings = load_settings(data_root=tmp_path, database_url=f"sqlite:///{tmp_path / 'r.sqlite'}")
    task = FakeTask(settings)

    def refused(exc=None, countdown=None, max_retries=None, **options):
        raise Reject(RuntimeError("nacked"), requeue=False)  # what Celery raises when the retry cannot be sent

    task.retry = refused
    with pytest.raises(Reject) as caught:
        runner._retry_or_requeue(task, settings, 0, ConnectionError("database away"))
    assert caught.value.requeue is True  # back to its queue, not acknowledged unanswered


def test_a_refused_retry_is_named_in_the_flagged_rows():
    from celery.exceptions import Reject
    from kombu.exceptions import OperationalError

    nacked = OperationalError("")
    nacked.__cause__ = type("MessageNacked", (Exception,), {})()
    assert runner.not_retried(Reject(nacked, requeue=False)) == (
        "not retried: the broker refused the retry (a queue at its max-length)")
    timed_out = runner.not_retried(Reject(TimeoutError("no confirm in 30 s"), requeue=False))
    assert timed_out == "not retried: the retry could not be sent (TimeoutError: no confirm in 30 s)"


def test_a_model_load_whose_retry_is_refused_gives_flagged_rows(tmp_path, monkeypatch):
    from celery.exceptions import Reject

    settings = load_settings(data_root=tmp_path, database_url=f"sqlite:///{tmp_path / 'r.sqlite'}")
    task = FakeTask(settings)

    def refused(exc=None, countdown=None, max_retries=None, **options):
        raise Reject(TimeoutError("no confirm"), requeue=False)

    def unreachable(*args, **kwargs):
        raise ConnectionError("weights on a network mount that went away")

    task.retry = refused
    monkeypatch.setattr(engine, "get_pipeline", unreachable)
    refs = [{"path": "a.fits", "hdu": 1, "row": 0}]
    summary = runner.run_task(task, "bossnet", refs, {"draws": 1})
    (row,) = ResultStore(settings.database).rows("bossnet")
    assert summary["rows"] == 1 and row["flag_bad"]
    assert row["error"].startswith("model not loaded, not retried: the retry could not be sent (TimeoutError")


def test_a_malformed_option_is_set_aside_alone(caplog):
    from workers import registry
    from workers.pipeline import UnloadedPipeline

    astronn = UnloadedPipeline(registry.get("astronn_dist"))
    default = astronn.options()
    # AstroNN needs at least one draw: draws=0 falls back to its default, the seed stays.
    kept = runner.message_options(astronn, {"draws": 0, "seed": 5}, "t-1")
    assert (kept.draws, kept.seed) == (default.draws, 5)
    assert "ignoring malformed option draws=0" in caplog.text and "seed" not in caplog.text
    kept = runner.message_options(astronn, {"draws": 7, "seed": "x", "precision": "fp8"}, "t-2")
    assert (kept.draws, kept.seed, kept.precision) == (7, default.seed, default.precision)
    # a typo's million draws would fill the memory before the first row
    kept = runner.message_options(astronn, {"draws": 10**6, "seed": 2}, "t-4")
    assert (kept.draws, kept.seed) == (default.draws, 2) and "takes at most 10000 draws" in caplog.text
    kept = runner.message_options(astronn, {"draws": 3, "seed": 1}, "t-3")
    assert (kept.draws, kept.seed) == (3, 1)
