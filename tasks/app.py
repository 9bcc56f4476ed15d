"""The Celery app, built from settings: queues, routes, JSON only, late acks.

With no broker configured the app uses the embedded broker (``tasks.embedded``, kombu's
filesystem transport that keeps a message until it is acknowledged) in the state folder,
so a laptop needs no server; ``SPECQ_BROKER_URL`` (or ``CELERY_BROKER_URL``) switches to Redis
or RabbitMQ (``tasks.brokers``). Each device queue has two lanes (``tasks.lanes``; on RabbitMQ
a worker's bulk consumers are held back by ``tasks.lane_gate``).

Importing this module builds nothing and reads no environment: :func:`get_app` builds the
process's app on first use (``tasks.app.app`` and ``tasks.app`` name it too, so ``celery -A
tasks worker`` finds it), from the settings it is given or, failing those, from
:func:`workers.settings.load_settings`. :func:`configure` sets any app up from explicit settings.
"""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

from celery import Celery
from kombu import Queue

from tasks.brokers import broker_errors  # noqa: F401  (declared with the brokers; callers import it from here)
from workers import registry
from workers.settings import Settings, load_settings

log = logging.getLogger("specq")

EMBEDDED_TRANSPORT = "tasks.embedded:Transport"
_app: Celery | None = None


def _tls_options(settings: Settings) -> dict:
    """Celery's TLS settings for ``rediss://`` URLs: verify the server unless the URL says otherwise.

    Certificates can be named in the URL (``?ssl_ca_certs=/path/ca.pem&ssl_certfile=…``).
    """
    import ssl

    out: dict = {}
    for key, url in (("broker_use_ssl", settings.broker), ("redis_backend_use_ssl", settings.result_backend or "")):
        if url.lower().startswith("rediss://") and "ssl_cert_reqs" not in url:
            out[key] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return out


def worker_queues(settings: Settings) -> list[str]:
    """Every queue the pipelines are routed to (a worker with no ``-Q`` consumes them all)."""
    return sorted({settings.queue_for(name) for name in registry.names()})


def broker_transport(settings: Settings) -> str | None:
    """The transport class for the broker URL: specq's for the embedded broker, Redis and RabbitMQ, else kombu's."""
    from tasks.brokers import kind

    scheme = urlsplit(settings.broker).scheme.lower()
    if scheme in ("redis", "rediss"):  # not redis+socket://: its '+' names kombu's transport itself
        return "tasks.brokers:RedisTransport"
    return {"embedded": EMBEDDED_TRANSPORT, "rabbitmq": "tasks.brokers:RabbitMQTransport",
            "rabbitmq-tls": "tasks.brokers:RabbitMQSSLTransport"}.get(kind(settings))


def queue_declarations(settings: Settings) -> dict:
    """Celery's queue table and routes: both lanes of every device queue (see tasks.lanes).

    RabbitMQ declares them with ``settings.queue_type`` (``quorum``: replicated across nodes).
    """
    from tasks.brokers import kind
    from tasks.lanes import lane_queues

    arguments = ({"x-queue-type": settings.queue_type}
                 if kind(settings).startswith("rabbitmq") and settings.queue_type != "classic" else None)
    queues = worker_queues(settings)
    return {
        "task_queues": [Queue(q, routing_key=q, queue_arguments=arguments) for q in lane_queues(queues)],
        "task_default_queue": queues[0],
        "task_routes": {spec.task_name: {"queue": settings.queue_for(name)}
                        for name, spec in registry.pipelines().items()},
    }


REDIS_CONNECT_TIMEOUT_S = 10


def configure(app: Celery, settings: Settings) -> Celery:
    """(Re)configure ``app`` from ``settings`` (by :func:`get_app`, tests, bench and the demo)."""
    from tasks.brokers import kind

    transport_options: dict = {
        "visibility_timeout": settings.visibility_timeout,
        # Redis returns a dead worker's unacked message once it is older than the
        # visibility timeout, at the next sweep: sweep often enough that the bound is
        # visibility_timeout + restore interval (kombu's default sweep is ~100 s).
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 4)),
        "unacked_restore_throttle": 1,
        # The sweep's lock outlives a Redis killed while a worker held it (AOF keeps it):
        # no held message comes back until it expires (kombu's default: 300 s). A sweep
        # takes milliseconds, and each restore is a transaction of its own.
        "unacked_mutex_expire": 30,
        "socket_keepalive": True,
        # Ask the queues in the order given at every fetch: ordinary lanes before bulk ones.
        "queue_order_strategy": "priority",
    }
    if kind(settings) == "redis":
        # A connection that never completes (a rediss:// URL to a plain Redis waits in the TLS
        # handshake) ends in an error a producer reports, not a hang; a worker connects again.
        transport_options["socket_connect_timeout"] = REDIS_CONNECT_TIMEOUT_S
    if kind(settings).startswith("rabbitmq"):
        # Publisher confirms: a message is sent once RabbitMQ has it (written to disk for a
        # durable queue, replicated for a quorum queue); one it refuses (a queue at its
        # max-length with reject-publish) is an error, not a loss. Producers only: a worker
        # turns them off (tasks.lifecycle.publish_without_confirms).
        transport_options["confirm_publish"] = True
    if settings.embedded:
        from tasks.embedded import transport_options as embedded_options

        # kombu warns that the filesystem URL names no host; it needs none.
        logging.getLogger("kombu.connection").setLevel(logging.ERROR)
        transport_options.update(embedded_options(settings.broker_folder))
    tls = _tls_options(settings)
    app.conf.update(**tls)
    app.conf.update(
        broker_url=settings.broker,
        # The embedded broker: a worker killed mid-message leaves it in its in-flight folder,
        # and the next worker to poll puts it back in the queue (see tasks/embedded.py).
        broker_transport=broker_transport(settings),
        result_backend=settings.result_backend,
        task_ignore_result=not settings.result_backend,
        broker_transport_options=transport_options,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        # Pickle would let a message run code in the worker: JSON only, both ways.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A message is acknowledged after its rows are written; a worker killed mid-batch
        # leaves it unacked, and the broker hands it out again (Redis: after the
        # visibility timeout; prefork: at once, through reject_on_worker_lost).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        **queue_declarations(settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    app.specq_settings = settings
    # RabbitMQ: bulk consumers cancelled while a worker has work (a step only RabbitMQ workers include).
    app.steps["consumer"].add("tasks.lane_gate:BulkGate")
    # Reconfiguring a used app (tests, the demo) must not keep publishing through the old
    # broker's connection pool or the old queue table: drop Celery's cached ones.
    app._pool = None
    app.__dict__.pop("amqp", None)
    return app


def get_app(settings: Settings | None = None) -> Celery:
    """The process's Celery app, built on first use.

    Parameters
    ----------
    settings : Settings, optional
        What to build it from when it is not built yet (default:
        :func:`workers.settings.load_settings`); an app already built stays as it is
        (:func:`configure` changes it).
    """
    global _app
    if _app is None:
        app = Celery("specq", set_as_current=True)
        # A worker imports the task module: one task per pipeline (light: no torch), and the
        # worker's lifecycle (tasks.lifecycle).
        app.conf.imports = ("tasks.pipelines",)
        _app = configure(app, settings or load_settings())
    return _app


def __getattr__(name: str):
    if name == "app":  # ``from tasks.app import app``: built on first use
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
