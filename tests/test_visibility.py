"""The visibility timeout: minutes by default, one setting for every place Celery reads it,
a warning when a message outlasts half of it; the broker's persistence read from CONFIG GET."""
from __future__ import annotations

import logging

from celery import Celery

from tasks.app import configure
from tasks.brokers import persistence_warnings
from tasks.runner import warn_if_near_visibility_timeout
from workers.settings import load_settings


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
    settings = load_settings(state_dir=tmp_path, visibility_timeout=100)
    with caplog.at_level(logging.WARNING, logger="specq.worker"):
        assert not warn_if_near_visibility_timeout("bossnet", "t1", 32, 40.0, settings)
        assert warn_if_near_visibility_timeout("bossnet", "t2", 32, 61.0, settings)
    (record,) = caplog.records
    assert "SPECQ_VISIBILITY_TIMEOUT=100" in record.getMessage() and "SPECQ_BOSSNET_CHUNK_SIZE" in record.getMessage()


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
