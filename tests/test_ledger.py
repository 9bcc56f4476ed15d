"""The ledger of what was sent: recorded before publishing, settled by a row, sent again by reconcile."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from conftest import SHARED_REDIS, producer_app, worker_env
from tasks.reconcile import reconcile, unfinished_lines
from workers import ledger
from workers import row as result_row
from workers.refs import SpectrumRef
from workers.settings import load_settings
from workers.store import ResultStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return ResultStore(f"sqlite:///{tmp_path / 'results.sqlite'}").create()
    return ResultStore(request.getfixturevalue("postgres_schema_url")).create()


def _row(ref: SpectrumRef, error: str | None = None, pipeline: str = "bossnet") -> dict:
    """A row for ``ref``: a failure with ``error``, else a result of model "m…"."""
    from workers.engine import unloaded_pipeline

    row = result_row.build(unloaded_pipeline(pipeline), ref, error=error or "placeholder", task_id="t")
    if not error:
        row.update(error=None, flag_bad=False, model_sha256="m" * 64)
    return row


def test_a_row_settles_its_reference_and_a_file_row_settles_a_whole_file_reference(store):
    one, two = SpectrumRef("a/spec-1.fits", 1, 0), SpectrumRef("a/spec-2.fits", 1, 0)
    whole = SpectrumRef("a/spec-3.fits")  # the worker lists its spectra: any row of the file settles it
    ledger.record(store, "bossnet", [one.to_json(), two.to_json()], "task-1", {"draws": 5})
    ledger.record(store, "bossnet", [whole.to_json()], "task-2")
    assert ledger.summary(store)["unfinished"] == 3
    store.write("bossnet", [_row(one)])
    store.write("bossnet", [_row(SpectrumRef("a/spec-3.fits", 1, 0), error="flagged: unreadable")])
    left = ledger.unfinished(store)
    assert [(u.spectrum_key, u.task_id, u.options) for u in left] == [(two.key, "task-1", {"draws": 5})]
    # Another pipeline's row for the same spectrum does not settle bossnet's entry.
    store.write("astronn_dist", [_row(two, pipeline="astronn_dist")])
    assert [u.spectrum_key for u in ledger.unfinished(store)] == [two.key]
    store.write("bossnet", [_row(two, error="a failure row settles too")])
    assert ledger.summary(store) == {"unfinished": 0, "by_pipeline": {}, "oldest_s": None}


def test_sending_again_counts_the_send_and_keeps_one_entry(store):
    ref = SpectrumRef("b/spec-1.fits", 1, 0).to_json()
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    ledger.record(store, "bossnet", [ref], "first", now=old)
    assert ledger.unfinished(store, older_than_s=3600)[0].task_id == "first"
    ledger.record(store, "bossnet", [ref], "second")
    (entry,) = ledger.unfinished(store)
    assert (entry.task_id, entry.sends) == ("second", 2) and entry.age_s() < 60
    assert ledger.unfinished(store, older_than_s=3600) == []
    assert "sent 2 times" in unfinished_lines(store)[0]


def test_reconcile_sends_again_only_what_is_older_than_the_limit(store, tmp_path):
    settings = load_settings(state_dir=tmp_path / "state", database_url=store.url, bossnet_chunk_size=2)
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=settings.visibility_timeout + 5)
    lost = [SpectrumRef(f"c/spec-{i}.fits", 1, 0).to_json() for i in range(3)]
    ledger.record(store, "bossnet", lost, "lost", {"draws": 3}, now=old)
    ledger.record(store, "bossnet", [SpectrumRef("c/recent.fits", 1, 0).to_json()], "recent")
    sent = []

    def send(pipeline, payload, options, settings=None, bulk=False):
        sent.append((pipeline, [r["path"] for r in payload], options) + (("bulk",) if bulk else ()))
        ledger.record(store, pipeline, payload, f"again-{len(sent)}", options)
        return f"again-{len(sent)}"

    dry = reconcile(store, settings, dry_run=True, send=send)
    assert sent == [] and len(dry.found) == 3 and dry.lines() == ["bossnet: would send again 3 unfinished reference(s)"]
    done = reconcile(store, settings, send=send)  # default limit: the visibility timeout
    assert sent == [("bossnet", ["c/spec-0.fits", "c/spec-1.fits"], {"draws": 3}),
                    ("bossnet", ["c/spec-2.fits"], {"draws": 3})]
    assert done.task_ids == {"bossnet": ["again-1", "again-2"]}
    assert reconcile(store, settings, send=send).found == []  # just sent again: not old any more
    assert len(reconcile(store, settings, 0, dry_run=True, send=send).found) == 4
    sent.clear()
    again = reconcile(store, settings, 0, bulk=True, send=send)
    assert [s[-1] for s in sent] == ["bulk"] * 3 and again.lines()[0].endswith("(bulk lane)")


def test_a_reference_is_in_the_ledger_before_its_message_is_published(tmp_path):
    from tasks.producer import send_message

    settings = load_settings(state_dir=tmp_path / "state", database_url=f"sqlite:///{tmp_path / 'r.sqlite'}")
    store = ResultStore(settings.database).create()
    published = []

    class Broker:  # the app a producer publishes through; the broker goes away as it publishes
        specq_settings = settings

        def send_task(self, name, args, task_id, **kwargs):
            published.append([u.spectrum_key for u in ledger.unfinished(store) if u.task_id == task_id])
            raise ConnectionError("the broker went away")

    ref = SpectrumRef("d/spec-1.fits", 1, 0)
    with pytest.raises(ConnectionError):
        send_message("bossnet", [ref.to_json()], {"draws": 2}, settings=settings, celery_app=Broker())
    assert published == [[ref.key]]  # already recorded when the broker was asked
    assert [(u.spectrum_key, u.options) for u in ledger.unfinished(store)] == [(ref.key, {"draws": 2})]


def test_status_shows_how_many_were_sent_and_not_finished_and_the_oldest_age(store):
    from specq.status import render

    two_hours_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    ledger.record(store, "bossnet", [SpectrumRef("e/spec-1.fits", 1, 0).to_json()], "old", now=two_hours_ago)
    ledger.record(store, "bossnet", [SpectrumRef("e/spec-2.fits", 1, 0).to_json()], "new")
    text = render({"broker": "b", "database": "d", "sent_unfinished": ledger.summary(store)})
    (line,) = [line for line in text.splitlines() if line.startswith("sent, not finished")]
    oldest = int(line.split("oldest sent ")[1].split(" s ago")[0])
    assert line.startswith("sent, not finished: 2 ") and 7200 <= oldest < 7260, line


@pytest.mark.parametrize("broker", ["embedded", SHARED_REDIS])
def test_reconcile_leaves_alone_what_the_broker_still_holds(tmp_path, monkeypatch, broker, request):
    """Of three messages, one waits, one is in a worker's hands and one is lost: only the lost one is sent again."""
    import shutil

    from tasks.producer import submit

    env = worker_env(tmp_path, tmp_path / "data", f"sqlite:///{tmp_path / 'r.sqlite'}",
                     request.getfixturevalue("clean_redis") if broker == "redis" else None)
    _, settings = producer_app(env, monkeypatch)
    refs = [SpectrumRef(f"e/spec-{i}.fits", 1, 0).to_json() for i in range(3)]
    sub = submit(refs, "bossnet", chunk_size=1, settings=settings)
    waiting, taken, lost = sub.task_ids["bossnet"]
    if broker == "redis":
        import redis

        client = redis.Redis.from_url(settings.broker)
        by_id = {json.loads(raw)["headers"]["id"]: raw for raw in client.lrange("gpu", 0, -1)}
        client.lrem("gpu", 1, by_id[lost])
        client.lrem("gpu", 1, by_id[taken])  # taken as kombu takes it: out of the list, into unacked
        client.hset("unacked", "tag-1", json.dumps([json.loads(by_id[taken]), "", "gpu"]))
    else:
        queue = settings.broker_folder / "queue"
        by_id = {json.loads(path.read_bytes())["headers"]["id"]: path for path in queue.glob("*.msg")}
        by_id[lost].unlink()
        (settings.broker_folder / "inflight" / "a-worker").mkdir(parents=True)
        shutil.move(by_id[taken], settings.broker_folder / "inflight" / "a-worker" / by_id[taken].name)
    sent = []

    def send(pipeline, payload, options, settings=None, bulk=False):
        sent.append([r["path"] for r in payload])
        return "again"

    store = ResultStore(settings.database)
    done = reconcile(store, settings, 0, send=send)
    assert sent == [["e/spec-2.fits"]], sent
    assert done.still_held == 2 and done.broker_read
    assert done.lines()[1].startswith("left alone: 2 unfinished reference(s)"), done.lines()
