"""How many messages wait in each queue, and what else the broker tells about them.

The count comes from the broker's own kombu transport (a passive queue declaration), so
every broker kombu speaks to reports it the same way. What a count does not say comes from
one small adapter per broker: the oldest waiting message's age and the messages in flight
(the embedded broker's folders, :func:`tasks.embedded.queue_report`), or the age and the
unacknowledged messages of Redis.
"""
from __future__ import annotations

import json
import time

from workers.settings import Settings


def queue_depths(settings: Settings) -> dict[str, dict]:
    """Per queue of the registered pipelines: ``waiting``, and where the broker tells ``oldest_s`` and more.

    Raises
    ------
    Exception
        Whatever the broker's client raises when the broker cannot be reached.
    """
    from tasks.app import worker_queues

    queues = worker_queues(settings)
    out = {q: {"waiting": n} for q, n in transport_counts(settings, queues).items()}
    if settings.embedded:
        from tasks.embedded import queue_report

        for q in queues:
            out[q].update(queue_report(settings.broker_folder, q))
    elif settings.broker.startswith(("redis://", "rediss://", "unix://")):
        _redis_report(settings.broker, out)
    return out


def transport_counts(settings: Settings, queues: list[str]) -> dict[str, int]:
    """Messages waiting in each of ``queues``, as the broker's transport counts them.

    A queue the broker does not know (never declared; Redis: nothing in it) holds none.
    """
    from kombu import Connection

    from tasks.app import EMBEDDED_TRANSPORT

    if settings.embedded:
        from tasks.embedded import QUEUE, transport_options

        if not (settings.broker_folder / QUEUE).is_dir():  # no message was ever sent here
            return {q: 0 for q in queues}
        connection = Connection(settings.broker, transport=EMBEDDED_TRANSPORT,
                                transport_options=transport_options(settings.broker_folder))
    else:
        connection = Connection(settings.broker, connect_timeout=3)
    counts: dict[str, int] = {}
    with connection:
        connection.ensure_connection(max_retries=1)
        for q in queues:
            # A refused passive declaration closes its channel: one channel per queue.
            channel = connection.channel()
            try:
                counts[q] = channel.queue_declare(queue=q, passive=True).message_count
            except connection.channel_errors:
                counts[q] = 0
            finally:
                try:
                    channel.close()
                except (*connection.connection_errors, *connection.channel_errors):
                    pass
    return counts


def _redis_report(url: str, out: dict[str, dict]) -> None:
    """The oldest waiting message's age per queue, and the unacknowledged messages of all queues."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=3)
    now = time.time()
    for q, report in out.items():
        report["oldest_s"] = None
        if report["waiting"]:
            # kombu pushes on the left and pops on the right: the oldest is at index -1.
            try:
                sent = json.loads(client.lindex(q, -1)).get("headers", {}).get("specq_sent")
                report["oldest_s"] = now - float(sent) if sent else None
            except (ValueError, TypeError, AttributeError):
                pass
    if out:
        next(iter(out.values()))["unacked_all_queues"] = client.hlen("unacked")
