"""The visibility timeout: minutes by default, one setting for every place Celery reads it,
a warning when a full message may outlast half of it (estimated when a worker loads its model)
and when a message did; the broker's persistence read from CONFIG GET."""
from __future__ import annotations

import logging

import pytest
from celery import Celery

from tasks.app import configure
from tasks.brokers import persistence_warnings
from tasks import visibility
from tasks.visibility import warn_if_near_visibility_timeout
from conftest import producer_app, wait_for, worker_env
from workers import registry
from workers.pipeline import Options
from workers import engine
from workers.settings import load_settings
from workers.spectrum import INSTRUMENTS, examples


def test_default_brings_a_killed_workers_message_back_within_minutes(tmp_path):
    settings = load_settings(state_dir=tmp_path)
    assert 60 <= settings.visibility_timeout <= 15 * 60


def test_one_setting_reaches_every_place_celery_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECQ_VISIBILITY_TIMEOUT", "240")
    settings = load_settings(state_dir=tmp_path, broker_url="redis://127.0.0.1:1/0",
                             result_backend="redis://127.0.0.1:1/1")
    app = configure(Celery("t", set_as_current=False), settings)
    assert app.conf.broker_transport_options["visibility_timeout"] == 240
    assert app.conf.result_backend_transport_options["visibility_timeout"] == 240
    # Redis looks for messages to give back often enough that the bound stays the timeout.
    assert app.conf.broker_transport_options["unacked_restore_interval"] <= 240 / 4


def test_a_message_taking_more_than_half_the_timeout_is_warned_of(tmp_path, caplog):
    settings = load_settings(state_dir=tmp_path, visibility_timeout=100, broker_url="redis://127.0.0.1:1/0")
    with caplog.at_level(logging.WARNING, logger="specq.worker"):
        assert not warn_if_near_visibility_timeout("bossnet", "t1", 32, 40.0, settings)
        assert warn_if_near_visibility_timeout("bossnet", "t2", 32, 61.0, settings)
    (record,) = caplog.records
    assert "SPECQ_VISIBILITY_TIMEOUT=100" in record.getMessage() and "SPECQ_BOSSNET_CHUNK_SIZE" in record.getMessage()


def test_the_warning_after_a_message_names_the_brokers_own_limit(tmp_path, caplog):
    embedded = load_settings(state_dir=tmp_path, visibility_timeout=100)
    rabbit = load_settings(state_dir=tmp_path, visibility_timeout=100, broker_url="amqp://guest:guest@127.0.0.1:1//")
    with caplog.at_level(logging.WARNING, logger="specq.worker"):
        # The embedded broker takes no message back from a live worker, however long it runs.
        assert not warn_if_near_visibility_timeout("bossnet", "t1", 32, 10_000.0, embedded)
        # RabbitMQ's limit is its consumer_timeout, not SPECQ_VISIBILITY_TIMEOUT.
        assert not warn_if_near_visibility_timeout("bossnet", "t2", 32, 61.0, rabbit)
        assert warn_if_near_visibility_timeout("bossnet", "t3", 32, visibility.RABBITMQ_CONSUMER_TIMEOUT_S, rabbit)
    (record,) = caplog.records
    assert "consumer_timeout" in record.getMessage() and "SPECQ_VISIBILITY_TIMEOUT" not in record.getMessage()


class _Redis:
    def __init__(self, **config):
        self.config = config

    def config_get(self, pattern):
        prefix = pattern.rstrip("*")
        return {k: v for k, v in self.config.items() if k.startswith(prefix)}


def test_persistence_warnings_from_config_get(tmp_path):
    settings = load_settings(state_dir=tmp_path, broker_url="redis://127.0.0.1:1/0")
    kept = _Redis(appendonly="yes", maxmemory="0", **{"maxmemory-policy": "allkeys-lru"})
    assert persistence_warnings(settings, kept) == []  # no memory limit: nothing is evicted
    lossy = _Redis(appendonly="no", maxmemory="1000000", **{"maxmemory-policy": "allkeys-lru"})
    warnings = persistence_warnings(settings, lossy)
    assert len(warnings) == 2 and "no append-only file" in warnings[0] and "allkeys-lru" in warnings[1]
    assert persistence_warnings(load_settings(state_dir=tmp_path), lossy) == []  # the embedded broker: no Redis


def test_the_limit_is_the_brokers(tmp_path):
    assert visibility.hold_limit(load_settings(state_dir=tmp_path)) is None  # embedded: a live worker keeps its message
    redis = load_settings(state_dir=tmp_path, broker_url="redis://127.0.0.1:1/0", visibility_timeout=240)
    assert visibility.hold_limit(redis) == (240, "SPECQ_VISIBILITY_TIMEOUT=240 s")
    seconds, setting = visibility.hold_limit(load_settings(state_dir=tmp_path, broker_url="amqp://guest@h//"))
    assert seconds == 1800 and "consumer_timeout" in setting


class _ClockedPipeline:
    """A pipeline whose every predicted row costs one second of a fake clock."""

    name, instrument = "bossnet", "boss"
    spec = registry.get("bossnet")
    model_sha256 = "m"

    def __init__(self, clock, refuse=False, fixed=0.0):
        self.clock, self.refuse, self.calls, self.fixed = clock, refuse, [], fixed

    def example_spectra(self, n):
        return examples(self.instrument, n)

    def options(self, draws=None, seed=None):
        return Options(draws, seed)

    def predict(self, spectra, options):
        self.calls.append((len(spectra), options.draws))
        self.clock[0] += self.fixed + len(spectra) * (1 + options.draws)
        refused = self.refuse or options.draws >= getattr(self, "refuse_from", float("inf"))
        return [{"error": "refused" if refused else None} for _ in spectra]


def test_a_full_message_is_estimated_from_a_warm_batch(tmp_path, monkeypatch, caplog):
    clock = [0.0]
    monkeypatch.setattr(visibility.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(visibility, "_checked", set())
    pipeline = _ClockedPipeline(clock)
    assert visibility.estimate_message_seconds(pipeline, 32, 20) == 32 * 21  # one second a row, 21 rows a spectrum
    assert pipeline.calls == [(1, 1), (1, 8), (1, 1), (1, 8)]  # one spectrum at 1 and 8 draws: untimed, then timed
    # A call's fixed cost counts once a batch, not once a row: a single timing of 2 rows would say 32 × 21 × 6 / 2.
    calls = len(engine.growing_chunks(list(range(32)), 8))
    assert visibility.estimate_message_seconds(_ClockedPipeline(clock, fixed=4.0), 32, 20) == calls * 4 + 32 * 21
    assert visibility.estimate_message_seconds(_ClockedPipeline(clock, fixed=4.0), 32, 1) == 32 * 2 * 6 / 2  # one timing
    refusing_more = _ClockedPipeline(clock, fixed=4.0)
    refusing_more.refuse_from = 8  # refused at 8 draws: the single timing at 1 stands
    assert visibility.estimate_message_seconds(refusing_more, 32, 20) == 32 * 21 * 6 / 2
    assert visibility.estimate_message_seconds(_ClockedPipeline(clock, refuse=True), 32, 20) is None

    settings = load_settings(state_dir=tmp_path, broker_url="redis://127.0.0.1:1/0", visibility_timeout=1000)
    settings.chunk_sizes["bossnet"] = 16
    with caplog.at_level(logging.INFO, logger="specq.worker"):
        assert not visibility.check_fit(_ClockedPipeline(clock), settings, draws=20)  # 336 s: fits in 500
        monkeypatch.setattr(visibility, "_checked", set())
        settings.chunk_sizes["bossnet"] = 32
        assert visibility.check_fit(_ClockedPipeline(clock), settings, draws=20)  # 672 s: more than half
        assert not visibility.check_fit(_ClockedPipeline(clock), settings, draws=20)  # once per model
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "32 references × 20 draws" in warnings[0]
    assert "SPECQ_VISIBILITY_TIMEOUT=1000 s" in warnings[0] and "SPECQ_BOSSNET_CHUNK_SIZE" in warnings[0]


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_every_instrument_has_made_up_spectra(instrument):
    spectra = examples(instrument, 2)
    assert [s.instrument for s in spectra] == [instrument] * 2
    assert all(s.flux.size == s.wavelength.size == s.error.size and (s.flux > 0).all() for s in spectra)
    assert not (spectra[0].flux == spectra[1].flux).all()


@pytest.mark.integration
def test_a_worker_warns_at_its_first_load_when_a_full_message_may_not_fit(tmp_path, monkeypatch, clean_redis,
                                                                          start_worker):
    """A visibility timeout of 2 s against messages of 1000 spectra × 3 network rows. (A worker
    whose messages fit says its estimate and no more: tests/test_queue.py, on Redis.)"""
    from specq.testing.synthetic import make_dataset
    from tasks.producer import submit

    root = tmp_path / "data"
    files = sorted(set(make_dataset(root, n_boss=1, n_apogee=0, seed=2, formats=("spec-lite",))["path"]))
    env = worker_env(tmp_path, root, f"sqlite:///{tmp_path / 'r.sqlite'}", clean_redis,
                     SPECQ_VISIBILITY_TIMEOUT=2, SPECQ_BOSSNET_CHUNK_SIZE=1000, SPECQ_DEVICE="cpu")
    _, settings = producer_app(env, monkeypatch)
    worker = start_worker(env, queues="gpu")
    submit(files, "bossnet", options={"draws": 2}, settings=settings)
    warning = "bossnet: a message of 1000 references × 2 draws may take about"
    wait_for(lambda: warning in worker.log_text(), 180, what="the estimate's warning",
             on_fail=lambda: worker.log_text()[-3000:])
    line = next(line for line in worker.log_text().splitlines() if warning in line)
    assert "WARNING" in line and "more than half of SPECQ_VISIBILITY_TIMEOUT=2 s" in line
    assert "SPECQ_BOSSNET_CHUNK_SIZE" in line
