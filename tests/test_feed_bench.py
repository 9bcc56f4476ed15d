"""``specq bench --feed``: the whole worker path with the null model, per input format."""
from __future__ import annotations

import pytest

from specq.bench.feed import FEED_FORMATS, STAGES, render_feed, run_feed


def test_the_feed_table_has_every_stage_and_reader_count(tmp_path):
    results = run_feed(["apStar", "mwmVisit"], n_spectra=4, database_url=f"sqlite:///{tmp_path / 'f.sqlite'}",
                       readers=2, repeat=1, queue=False, workdir=tmp_path / "work")
    assert [r.format for r in results] == ["apStar", "mwmVisit"]
    for r in results:
        assert r.spectra >= 4 and set(r.stages_ms) == set(STAGES)
        assert r.stages_ms["read"] > 0 and r.stages_ms["write"] > 0
        assert set(r.feed_per_s) == {"1 process", "2 process", "2 thread"} and min(r.feed_per_s.values()) > 0
        assert r.in_process_per_s > 0 and r.queue_per_s is None and r.cpu_capability
    text = render_feed(results)
    assert "write, rows/s" in text and "feed, 2 process readers" in text and "queue" not in text.split("\n")[-2]


def test_unknown_formats_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        run_feed(["spec-lite", "fits"], queue=False, workdir=tmp_path)
    assert "spec-lite" in FEED_FORMATS


@pytest.mark.integration
def test_the_feed_goes_through_a_real_queue_and_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECQ_NULL_BOSS_CHUNK_SIZE", "2")  # three messages: a steady rate after the first
    (result,) = run_feed(["spec-lite"], n_spectra=6, broker_url="embedded", readers=2, repeat=1,
                         database_url=f"sqlite:///{tmp_path / 'q.sqlite'}", workdir=tmp_path / "work")
    assert result.broker == "embedded filesystem" and result.queue_per_s > 0
    assert result.queue_messages == 3 and result.queue_steady_per_s > 0
    assert result.message_overhead_ms is not None
    text = render_feed([result])
    assert "message overhead" in text and "queue, steady, spectra/s" in text


def test_the_steady_rate_counts_the_messages_after_the_first():
    from datetime import datetime, timezone

    from specq.bench.feed import _message_ends, _steady_rate

    def row(task, second):
        return {"task_id": task, "created": datetime(2026, 1, 1, 0, 0, second, tzinfo=timezone.utc)}

    rows = [row("b", 5), row("a", 1), row("a", 2), row("b", 4), row("c", 9), row("other", 30)]
    ends, counts = _message_ends(rows, {"a", "b", "c"})
    assert [e - ends[0] for e in ends] == [0.0, 3.0, 7.0] and counts == [2, 2, 1]
    assert _steady_rate(ends, counts) == pytest.approx((2 + 1) / 7)  # messages b and c, from a's end to c's
    assert _steady_rate(ends[:1], counts[:1]) is None and _steady_rate([ends[0]] * 2, [2, 2]) is None


def test_the_write_stage_on_postgresql_leaves_one_row_per_spectrum(tmp_path, postgres_schema_url):
    from specq.bench.feed import null_pipelines
    from workers.store import ResultStore

    (result,) = run_feed(["mwmVisit"], n_spectra=5, database_url=postgres_schema_url, readers=2, repeat=1,
                         queue=False, workdir=tmp_path / "work")
    assert result.stages_ms["write"] > 0
    with null_pipelines():
        store = ResultStore(postgres_schema_url)
        rows = store.rows(result.pipeline)  # emptied before every timed round, then written once more in process
        store.engine.dispose()
    assert len(rows) == len({r["spectrum_key"] for r in rows}) == result.spectra
    assert all(r["error"] is None for r in rows)


def test_visits_sets_how_many_spectra_each_mwmvisit_file_holds(tmp_path):
    (result,) = run_feed(["mwmVisit"], n_spectra=12, database_url=f"sqlite:///{tmp_path / 'v.sqlite'}", readers=1,
                         repeat=1, queue=False, workdir=tmp_path / "work", visits=6)
    assert (result.spectra, result.files) == (12, 2)
    with pytest.raises(ValueError, match="visits must be at least 1"):
        run_feed(["mwmVisit"], n_spectra=2, queue=False, workdir=tmp_path / "zero", visits=0)
