"""What Celery does not tell about a broker: each lane's depth and oldest message, and plain errors.

Three brokers, chosen by ``SPECQ_BROKER_URL``:

* none — the embedded broker (``tasks.embedded``), files in the state folder;
* ``redis://`` / ``rediss://`` — each queue a Redis list;
* ``amqp://`` / ``amqps://`` (``pyamqp://``) — RabbitMQ, its queues classic or quorum
  (``SPECQ_QUEUE_TYPE``).

A waiting message carries its enqueue time (header ``specq_sent``): Redis and the embedded
broker let the oldest be read without taking it, RabbitMQ over AMQP tells only how many
messages wait (the oldest age is then left out).

Whether the broker keeps what it is given: a Redis without an append-only file loses, when
it stops uncleanly, every message queued since its last snapshot; a Redis that may evict
keys under memory pressure drops messages with no error anywhere. Both are read with
``CONFIG GET`` where the server allows it (a managed Redis may not: then nothing is said).
``specq status`` and a worker starting up say what they find.

A message a worker took and has not acknowledged is *held*: Redis keeps it in kombu's
``unacked`` hash with the time it was handed out (``unacked_index``); the embedded broker
keeps it in its in-flight folder. One held much longer than a message takes is a worker
stuck or killed; Redis gives it to another worker after the visibility timeout.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kombu.transport import pyamqp
from kombu.transport import redis as kombu_redis

from workers.settings import Settings
from workers.store_check import redact_url

log = logging.getLogger("specq.broker")

CONNECT_TIMEOUT_S = 3.0
# kombu's Redis transport keys (its defaults, which specq does not change).
UNACKED_INDEX = "unacked_index"
# The schemes a Redis client opens from a URL (redis.Redis.from_url).
REDIS_SCHEMES = ("redis", "rediss")


def broker_errors() -> tuple[type[BaseException], ...]:
    """What a broker that is not there (or drops the connection) raises: kombu's, redis's and amqp's errors."""
    from kombu.exceptions import OperationalError as KombuOperationalError

    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError, KombuOperationalError]
    try:
        import redis.exceptions

        kinds += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:
        pass
    try:  # RabbitMQ: connection refused or closed, a vhost not there, credentials or permissions refused, a
        # message refused, a queue declared before with other arguments
        import amqp.exceptions

        kinds += [amqp.exceptions.ConnectionError, amqp.exceptions.AccessRefused, amqp.exceptions.MessageNacked,
                  amqp.exceptions.PreconditionFailed]
    except ImportError:
        pass
    return tuple(kinds)


def kind(settings: Settings) -> str:
    """``embedded``, ``redis``, ``rabbitmq``, ``rabbitmq-tls``, or the URL's scheme for any other broker."""
    if settings.embedded:
        return "embedded"
    scheme = urlsplit(settings.broker).scheme.lower()
    if scheme in ("redis", "rediss", "redis+socket"):
        return "redis"
    if scheme in ("amqp", "pyamqp"):
        return "rabbitmq"
    if scheme == "amqps":
        return "rabbitmq-tls"
    return scheme


class RabbitMQTransport(pyamqp.Transport):
    """kombu's AMQP transport, with the prefetch limit counted per consumer.

    A worker consumes the two lanes of a queue as two consumers on one channel. With the
    limit counted per channel (what kombu asks of RabbitMQ 3.3–3.x), RabbitMQ picks which
    queue fills a freed slot at random, and a new ordinary message can wait behind several
    bulk ones (measured: up to 4 in 5 tries). Counted per consumer (RabbitMQ's rule for
    quorum queues, and for every queue from 4.0), the ordinary consumer always has room
    for it: it waits for the bulk message in hand and at most one more.
    """

    def qos_semantics_matches_spec(self, connection) -> bool:
        return True  # Celery then sets the prefetch per consumer (apply_global=False)


class RabbitMQSSLTransport(pyamqp.SSLTransport, RabbitMQTransport):
    """:class:`RabbitMQTransport` over TLS (``amqps://``)."""


# Messages a Redis worker took from a queue and could not record as held (see
# RedisTransport), by the broker they came from: put back at the next chance.
_UNRECORDED: dict[str, list[tuple[dict, str, str]]] = {}
_UNRECORDED_LOCK = threading.Lock()


def _forget_unrecorded_in_child() -> None:
    # A forked child (a prefork pool's) would put the parent's messages back a second time.
    global _UNRECORDED_LOCK
    _UNRECORDED.clear()
    _UNRECORDED_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_unrecorded_in_child)


class _RecordingQoS(kombu_redis.QoS):
    """kombu's Redis QoS, keeping a message it took but could not record as held."""

    def append(self, message, delivery_tag):
        import redis

        try:
            super().append(message, delivery_tag)
        except (*self.channel.connection_errors, redis.RedisError):  # gone, or refusing writes (OOM, READONLY)
            delivery = message.delivery_info
            with _UNRECORDED_LOCK:
                _UNRECORDED.setdefault(self.channel.broker_key(), []).append(
                    (message._raw, delivery["exchange"], delivery["routing_key"]))
            log.warning("message %s was taken from its queue and could not be recorded as held: it goes back to "
                        "its queue as soon as the broker takes writes again (until then it is only in this "
                        "worker's memory)", message.properties.get("correlation_id", delivery_tag))
            raise
        if _UNRECORDED:  # the broker takes writes again: what it refused before goes back now
            self.channel.put_back_unrecorded()


class _RecordingChannel(kombu_redis.Channel):
    """kombu's Redis channel that first puts back what a broken connection left unrecorded."""

    QoS = _RecordingQoS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # connects (kombu pings the server here)
        self.put_back_unrecorded()

    def broker_key(self) -> str:
        return self.connection.client.as_uri(include_password=True)

    def put_back_unrecorded(self) -> int:
        """Return the messages that could not be recorded as held to the head of their queues.

        Any failure keeps them for the next try (never raised: a channel still opens).
        """
        key = self.broker_key()
        with _UNRECORDED_LOCK:
            waiting = _UNRECORDED.pop(key, [])
        if not waiting:
            return 0
        try:
            with self.conn_or_acquire() as client:
                pipe = client.pipeline()
                for payload, exchange, routing_key in waiting:
                    queues = self._lookup(exchange, routing_key)
                    if not queues:
                        raise LookupError(f"no queue bound for exchange {exchange!r}, routing key {routing_key!r}")
                    payload.get("headers", {})["redelivered"] = True
                    for queue in queues:  # the right end is the head: popped next
                        pipe.rpush(self._q_for_pri(queue, self._get_message_priority(payload, reverse=False)),
                                   json.dumps(payload))
                pipe.execute()
        except Exception as exc:  # kept for the next try, whatever the cause
            with _UNRECORDED_LOCK:
                _UNRECORDED.setdefault(key, [])[:0] = waiting
            log.warning("%d message(s) not recorded as held are still waiting to go back to their queues: %s: %s",
                        len(waiting), type(exc).__name__, exc)
            return 0
        log.warning("%d message(s) that could not be recorded as held are back in their queues", len(waiting))
        return len(waiting)


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, without its window for losing a message.

    A worker takes a message with ``BRPOP`` (it leaves the queue) and then records it as
    held in the ``unacked`` hash (so the visibility timeout can return it). When the
    connection breaks between the two (Redis killed or restarted), or Redis refuses the
    write (out of memory, a read-only replica), kombu drops the message: it is in neither
    place. This transport keeps such a message in the worker's memory and puts it back at
    the head of its queue as soon as it connects again or Redis takes writes again. Should
    the record have reached Redis after all, the message is delivered twice, which a result
    row keyed by spectrum and model absorbs. A worker stopped before then loses it (its
    log names it); the ledger still lists its spectra for ``specq reconcile``.
    ``redis+socket://`` URLs name kombu's own transport.
    """

    Channel = _RecordingChannel


def vhost(settings: Settings) -> str:
    """The RabbitMQ virtual host a broker URL names (``/`` when none)."""
    path = urlsplit(settings.broker).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _server_text(text: str, code: str) -> str:
    """What RabbitMQ said after its reply code (``ACCESS_REFUSED - access to queue 'gpu' …``)."""
    return text.partition(f"{code} - ")[2].strip() or text.strip()


def refusal(exc: BaseException, settings: Settings) -> str | None:
    """One line when the broker refused the user, password, virtual host, a permission or a queue's
    declaration (waiting will not help), else None."""
    url = redact_url(settings.broker)
    text = str(exc)
    if type(exc).__name__ == "PreconditionFailed" and "inequivalent arg" in text:
        # The queue exists with other arguments (by hand, another program, another SPECQ_QUEUE_TYPE):
        # RabbitMQ never changes a queue's arguments, so every declaration fails the same way.
        found = re.search(r"for (queue|exchange) '([^']*)'", text)
        kind_, name = found.groups() if found else ("queue", "?")
        if kind_ == "exchange":  # declared by hand or another program as another type
            return (f"the broker {url} already has exchange {name!r} declared otherwise than specq's (direct, "
                    f"durable): {_server_text(text, 'PRECONDITION_FAILED')}; delete it "
                    f"(rabbitmqadmin --vhost={vhost(settings)} delete exchange name={name}, or in the management UI)")
        return (f"the broker {url} already has queue {name!r} declared with other arguments than specq's "
                f"(a {settings.queue_type} queue, SPECQ_QUEUE_TYPE, with no other arguments): "
                f"{_server_text(text, 'PRECONDITION_FAILED')}; drain and delete it "
                f"(rabbitmqctl delete_queue -p {vhost(settings)} {name}) or set SPECQ_QUEUE_TYPE to its type")
    if type(exc).__name__ == "AccessRefused" and "access to " in text:
        # A channel refused an operation: the login was accepted, a permission is missing.
        return (f"the broker {url} refused this user an operation in virtual host {vhost(settings)!r}: "
                f"{_server_text(text, 'ACCESS_REFUSED')} (specq needs to configure, write and read its queues and "
                f"Celery's exchanges: rabbitmqctl set_permissions -p {vhost(settings)} USER '.*' '.*' '.*')")
    if type(exc).__name__ == "AccessRefused" or "ACCESS_REFUSED" in text:
        return f"the broker {url} refused the user name or password (ACCESS_REFUSED)"
    if type(exc).__name__ == "NotAllowed" or "NOT_ALLOWED" in text:
        return (f"the broker {url} has no virtual host {vhost(settings)!r} this user may use "
                f"(rabbitmqctl add_vhost / set_permissions)")
    return None


# How long a publisher waits for RabbitMQ to confirm a message: one under a disk or memory
# alarm is blocked, and the wait ends in an error, not a hang.
CONFIRM_TIMEOUT_S = 30.0


def nacked(exc: BaseException) -> bool:
    """Whether RabbitMQ refused a message it was sent (a negative publisher confirm)."""
    from workers.remote import exception_chain

    # kombu raises its own error from amqp's MessageNacked.
    return any(type(cause).__name__ == "MessageNacked" for cause in exception_chain(exc))


def refused_message(exc: BaseException, settings: Settings) -> str | None:
    """One line when RabbitMQ refused a message it was sent (a negative publisher confirm), else None."""
    if not nacked(exc):
        return None
    return (f"the broker {redact_url(settings.broker)} refused a message (RabbitMQ nacked it: a queue at its "
            f"max-length with overflow reject-publish); the messages before it were sent, it and the rest were "
            f"not: enqueue again once there is room (a spectrum sent twice still gets one row)")


def not_sent_note(again: str) -> str:
    """What became of a submission that a broker stopped taking, ``again`` the way to send it
    (``"enqueue it"``): each message is in the ledger before it is published, and the loop
    stops at the first the broker refuses."""
    return (f"the message the broker did not take stays listed as sent and not finished (specq status), and "
            f"those after it were not sent: {again} all again once the broker takes messages (a spectrum "
            f"sent twice still gets one row)")


def describe_error(exc: BaseException, settings: Settings) -> str:
    """One line for a broker that cannot be used: not reachable, credentials refused, no such vhost."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return (refusal(exc, settings) or refused_message(exc, settings)
            or f"cannot reach the broker {redact_url(settings.broker)}: {first} (is it running? SPECQ_BROKER_URL)")


def check(settings: Settings, queues=()) -> None:
    """Connect to the broker once and close, raising what the broker said (see :func:`describe_error`).

    The embedded broker needs no server: nothing to check.

    Parameters
    ----------
    settings : Settings
    queues : iterable of kombu.Queue, optional
        RabbitMQ: declared (with their exchanges and bindings) as a worker's consumer would,
        so that a missing permission or a queue that exists with other arguments is found
        here rather than by Celery, which stops the worker with a traceback.
    """
    if settings.embedded:
        return
    from kombu import Connection

    with Connection(settings.broker, connect_timeout=CONNECT_TIMEOUT_S,
                    transport_options={"max_retries": 1}) as connection:
        connection.ensure_connection(max_retries=1)
        if kind(settings) == "redis":
            connection.default_channel.client.ping()
        elif kind(settings).startswith("rabbitmq"):
            for queue in queues:
                queue(connection.default_channel).declare()


def refused(settings: Settings, queues=()) -> str | None:
    """The broker's refusal of this user, password, vhost, a permission or a queue (``queues``,
    see :func:`check`) in one line, or None.

    None too for a broker not reachable now: that is logged, and a worker keeps trying
    (it may start before its broker); a refusal would only repeat.
    """
    try:
        check(settings, queues)
    except broker_errors() as exc:
        line = refusal(exc, settings)
        if line is None:
            log.warning("%s; waiting for it", describe_error(exc, settings))
        return line
    return None


def lane_depths(settings: Settings, queues: list[str]) -> dict[str, dict]:
    """Messages waiting in each lane of each device queue, and the oldest's age where the broker tells.

    Returns
    -------
    dict
        ``{queue: {lane: {"waiting": int, "oldest_s": float | None, ...}}}``; the
        embedded broker adds ``in_flight`` (taken by a worker, not yet acknowledged).
    """
    from tasks.lanes import LANES, lane_queue

    names = {q: {lane: lane_queue(q, lane) for lane in LANES} for q in queues}
    flat = [name for lanes in names.values() for name in lanes.values()]
    read = {"embedded": _embedded_depths, "redis": _redis_depths}.get(kind(settings), _amqp_depths)
    depths = read(settings, flat)
    return {q: {lane: depths[name] for lane, name in lanes.items()} for q, lanes in names.items()}


def _age(sent, now: float) -> float | None:
    try:
        return max(0.0, now - float(sent)) if sent else None
    except (TypeError, ValueError):
        return None


def _embedded_depths(settings: Settings, names: list[str]) -> dict[str, dict]:
    folder = settings.broker_folder / "queue"
    inflight = settings.broker_folder / "inflight"
    now = time.time()
    out = {}
    for name in names:
        # A message file is named <time>_<uuid>.<queue>.msg: "gpu" does not match "gpu.bulk".
        files = sorted(p for p in folder.glob("*.msg") if p.name.partition(".")[2] == f"{name}.msg") \
            if folder.exists() else []
        oldest = None
        if files:
            try:
                oldest = _age(json.loads(files[0].read_bytes()).get("headers", {}).get("specq_sent"), now)
                if oldest is None:  # a message from another producer: the file's time tells
                    oldest = max(0.0, now - files[0].stat().st_mtime)
            except (OSError, ValueError, AttributeError):  # taken meanwhile: its mtime is gone too
                oldest = None
        taken = [p for p in inflight.glob("*/*.msg") if p.name.partition(".")[2] == f"{name}.msg"] \
            if inflight.exists() else []
        out[name] = {"waiting": len(files), "oldest_s": oldest, "in_flight": len(taken)}
    return out


def is_redis(settings: Settings) -> bool:
    """True when the broker is a Redis this module can ask directly (``redis://``, ``rediss://``)."""
    return not settings.embedded and urlsplit(settings.broker).scheme.lower() in REDIS_SCHEMES


def _redis(settings: Settings):
    import redis

    return redis.Redis.from_url(settings.broker, socket_timeout=CONNECT_TIMEOUT_S,
                                socket_connect_timeout=CONNECT_TIMEOUT_S)


def _redis_depths(settings: Settings, names: list[str]) -> dict[str, dict]:
    client = _redis(settings)
    now = time.time()
    out = {}
    for name in names:
        depth = client.llen(name)
        oldest = None
        if depth:
            # kombu pushes on the left and pops on the right: the oldest is at index -1.
            try:
                oldest = _age(json.loads(client.lindex(name, -1) or b"{}").get("headers", {}).get("specq_sent"), now)
            except (ValueError, TypeError, AttributeError):
                oldest = None
        out[name] = {"waiting": depth, "oldest_s": oldest}
    return out


def _amqp_depths(settings: Settings, names: list[str]) -> dict[str, dict]:
    """RabbitMQ: a passive declare of each queue tells its ready messages and consumers."""
    from amqp.exceptions import NotFound
    from kombu import Connection

    out = {}
    with Connection(settings.broker, connect_timeout=CONNECT_TIMEOUT_S) as connection:
        connection.ensure_connection(max_retries=1)
        channel = connection.channel()
        try:
            for name in names:
                try:
                    _, waiting, consumers = channel.queue_declare(queue=name, passive=True)
                except NotFound:  # not declared yet: no worker or producer has used it
                    channel = connection.channel()  # RabbitMQ closes a channel after a failed declare
                    waiting, consumers = 0, 0
                out[name] = {"waiting": waiting, "oldest_s": None, "consumers": consumers}
        finally:
            channel.close()
    return out


_SCAN_CHUNK = 1000  # messages read from a Redis list at once


def held_task_ids(settings: Settings, names: list[str]) -> set[str] | None:
    """The task ids of every message the broker holds for the queues ``names``.

    Held means waiting in a queue, or taken by a worker and not acknowledged (Redis's
    ``unacked`` hash, the embedded broker's in-flight folders): such a message is not lost,
    however old. None where the messages cannot be read without taking them (RabbitMQ over
    AMQP).
    """
    if settings.embedded:
        from tasks.embedded import INFLIGHT, QUEUE

        folder = settings.broker_folder
        # A message moves while it is read: a worker takes it (queue → in flight) or hands it
        # back (in flight → queue), and the file listed is gone when read. Each folder is listed
        # only after the one before it was read, and the queue once more at the end, so a
        # message that moved is read where it went (listing both first would miss it, and
        # reconcile would send it again).
        ids: set[str] = set()
        read: set[str] = set()  # a message keeps its file name in both folders
        for pattern in (f"{QUEUE}/*.msg", f"{INFLIGHT}/*/*.msg", f"{QUEUE}/*.msg"):
            for path in folder.glob(pattern):
                if path.name in read:
                    continue
                task_id = _file_task_id(path)
                if task_id:
                    ids.add(task_id)
                    read.add(path.name)
        return ids
    if not is_redis(settings):
        return None
    client = _redis(settings)
    ids: set[str | None] = set()
    for name in names:
        # Workers pop from the right while producers push on the left: read from the left, a
        # message pushed meanwhile shifts the others right and is at worst read twice.
        for start in range(0, client.llen(name), _SCAN_CHUNK):
            ids.update(_task_id(raw) for raw in client.lrange(name, start, start + _SCAN_CHUNK - 1))
    for raw in client.hvals("unacked"):  # kombu's held messages: [payload, exchange, routing key]
        ids.add(_task_id(raw, held=True))
    ids.discard(None)
    return ids  # type: ignore[return-value]


def _task_id(raw: bytes | str, held: bool = False) -> str | None:
    """The Celery task id of a message as kombu stores it (JSON with ``headers.id``), or None.

    ``held``: an entry of Redis's ``unacked`` hash, the message first in a JSON list.
    """
    try:
        message = json.loads(raw)
        task_id = (message[0] if held else message).get("headers", {}).get("id")
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        return None
    return task_id if isinstance(task_id, str) else None


def _file_task_id(path: Path) -> str | None:
    try:
        return _task_id(path.read_bytes())
    except OSError:  # taken or acknowledged while we looked
        return None


def purge(settings: Settings, names: list[str]) -> int:
    """Drop every waiting message of the queues ``names`` (the bench's own queues); returns how many."""
    if settings.embedded:
        folder = settings.broker_folder / "queue"
        files = [p for p in folder.glob("*.msg") if p.name.partition(".")[2] in {f"{n}.msg" for n in names}]
        for path in files:
            path.unlink(missing_ok=True)
        return len(files)
    from amqp.exceptions import NotFound
    from kombu import Connection

    dropped = 0
    with Connection(settings.broker, connect_timeout=CONNECT_TIMEOUT_S) as connection:
        connection.ensure_connection(max_retries=1)
        for name in names:
            channel = connection.channel()
            try:
                dropped += channel.queue_purge(name) or 0
            except NotFound:  # RabbitMQ: a queue not declared yet has nothing to drop
                pass
            finally:
                channel.close()
    return dropped


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
    try:
        warnings = persistence_warnings(settings)
    except broker_errors() as exc:  # Celery itself waits for the broker and says so
        log.debug("broker persistence not checked: %s", exc)
        return
    for text in warnings:
        log.warning("%s", text)


class LaneGauges:
    """Prometheus gauges of every lane, read from the broker at each scrape.

    ``specq_lane_messages{queue, lane}``: messages waiting; ``specq_lane_oldest_seconds{queue,
    lane}``: the oldest one's age, where the broker tells it (not RabbitMQ over AMQP).
    Served by the first process of each worker (``SPECQ_METRICS_PORT``); every worker
    reports the same broker, so a dashboard takes the ``max`` over workers.
    """

    def __init__(self, settings: Settings, queues: list[str]):
        self.settings = settings
        self.queues = queues  # the device queues (tasks.app.worker_queues)

    def collect(self):
        import logging

        from prometheus_client.core import GaugeMetricFamily

        waiting = GaugeMetricFamily("specq_lane_messages", "Messages waiting in a lane of a queue.",
                                    labels=["queue", "lane"])
        oldest = GaugeMetricFamily("specq_lane_oldest_seconds", "Age of the oldest message waiting in a lane "
                                   "(where the broker tells it).", labels=["queue", "lane"])
        try:
            depths = lane_depths(self.settings, self.queues)
        except broker_errors() as exc:  # a scrape must not fail for a broker blip: the gauges are left out
            logging.getLogger("specq.metrics").warning("lane gauges: broker not answering: %s", exc)
            depths = {}
        for queue, lanes in depths.items():
            for lane, depth in lanes.items():
                waiting.add_metric([queue, lane], float(depth["waiting"]))
                if depth.get("oldest_s") is not None:
                    oldest.add_metric([queue, lane], float(depth["oldest_s"]))
        yield waiting
        yield oldest
