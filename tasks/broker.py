"""What the broker does not tell through Celery: whether it keeps what it is given, and
which messages workers hold.

A Redis without an append-only file loses, when it stops uncleanly, every message queued
since its last snapshot; a Redis that may evict keys under memory pressure drops
messages with no error anywhere. Both are read with ``CONFIG GET`` where the server
allows it (a managed Redis may not: then nothing is said). ``specq status`` and a worker
starting up say what they find.

A message a worker took and has not acknowledged is *held*: Redis keeps it in kombu's
``unacked`` hash with the time it was handed out (``unacked_index``); the embedded
broker keeps it in its in-flight folder. One held much longer than a message takes is
a worker stuck or killed; Redis gives it to another worker after the visibility timeout.
"""
from __future__ import annotations

import time
from pathlib import Path

from workers.settings import Settings

# kombu's Redis transport keys (its defaults, which specq does not change).
UNACKED_INDEX = "unacked_index"


def is_redis(settings: Settings) -> bool:
    return not settings.embedded and settings.broker.split("://", 1)[0] in ("redis", "rediss", "sentinel")


def _redis(settings: Settings):
    import redis

    return redis.Redis.from_url(settings.broker, socket_timeout=3, socket_connect_timeout=3)


def persistence_warnings(settings: Settings, client=None) -> list[str]:
    """What the broker Redis may lose, one sentence each ([] when it keeps everything or cannot say).

    Raises the broker's connection errors (the caller reports an unreachable broker).
    """
    if not is_redis(settings):
        return []
    import redis

    client = client or _redis(settings)
    try:
        config = {**client.config_get("appendonly"), **client.config_get("maxmemory*")}
    except redis.exceptions.ResponseError:  # CONFIG disabled or renamed (managed Redis): cannot tell
        return []
    out = []
    if str(config.get("appendonly", "")).lower() != "yes":
        out.append("the broker Redis has no append-only file (appendonly no): a crash or restart loses the "
                   "messages queued since its last snapshot (see deploy/redis.conf; `specq reconcile` sends "
                   "lost references again)")
    policy = str(config.get("maxmemory-policy", "noeviction")).lower()
    if int(config.get("maxmemory", 0) or 0) and policy != "noeviction":
        out.append(f"the broker Redis may evict keys when full (maxmemory-policy {policy}): an evicted key is a "
                   "lost message; set maxmemory-policy noeviction")
    return out


def held_ages(settings: Settings, now: float | None = None) -> list[float]:
    """Seconds each message held by a worker (taken, not acknowledged) has been held, oldest first."""
    now = time.time() if now is None else now
    if settings.embedded:
        folder = Path(settings.broker_folder) / "inflight"
        ages = []
        for path in folder.glob("*/*.msg") if folder.exists() else []:
            try:
                ages.append(now - path.stat().st_mtime)
            except OSError:  # acknowledged while we looked
                continue
        return sorted(ages, reverse=True)
    if not is_redis(settings):
        return []
    return sorted((now - score for _, score in _redis(settings).zrange(UNACKED_INDEX, 0, -1, withscores=True)),
                  reverse=True)


def warn_at_start(settings: Settings, log) -> None:
    """A worker starting up: say in its log what the broker may lose (nothing when it cannot tell)."""
    from tasks.app import broker_errors

    try:
        warnings = persistence_warnings(settings)
    except broker_errors() as exc:  # Celery itself waits for the broker and says so
        log.debug("broker persistence not checked: %s", exc)
        return
    for text in warnings:
        log.warning("%s", text)
