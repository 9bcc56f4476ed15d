"""The bulk lanes' gate on RabbitMQ: a worker holds no bulk message while ordinary work waits.

RabbitMQ pushes messages to a worker's consumers, one per lane queue, each allowed its own
unacknowledged messages (the prefetch limit is counted per consumer,
:class:`tasks.brokers.RabbitMQTransport`). A bulk consumer left consuming is refilled as
soon as its message is acknowledged, and that bulk message waits in the worker ahead of
the ordinary one RabbitMQ hands over at the same moment: a stream of new spectra would run
in turns with the reprocessing.

So a worker that serves both lanes of a device queue keeps its bulk consumers cancelled
while it has work:

* **closed** when the worker receives a message, of either lane: no bulk message is pushed
  behind it, and acknowledging a bulk message refills nothing;
* **opened** when the worker has been idle for :data:`GRACE_S` (time to read an ordinary
  message already in its socket, or one RabbitMQ hands over at the acknowledgement) and
  the ordinary lanes hold no ready message (a passive declare on a connection of the
  gate's own); RabbitMQ then pushes the next bulk message.

A new spectrum then waits for the message in hand, and for one bulk message more only when
it reaches the broker in the instant the gate opens. Redis and the embedded broker need no
gate: a worker there asks its queues in order at every fetch.
"""
from __future__ import annotations

import logging
import time

from celery import bootsteps, signals
from kombu.exceptions import OperationalError

log = logging.getLogger("specq.worker")

TICK_S = 0.005  # how often a closed gate looks at the worker
GRACE_S = 0.02  # idle this long before the ordinary lanes are asked: in-flight messages arrive first
CHECK_TIMEOUT_S = 1.0  # the look runs on the worker's event loop: a silent broker must not hold it


class BulkGate(bootsteps.StartStopStep):
    """A consumer bootstep (RabbitMQ only) that cancels the bulk consumers while the worker has work.

    Cancels are sent without waiting for RabbitMQ's reply: waiting would hand the
    deliveries read meanwhile to the worker inside this step's handler. kombu keeps no
    public handle on a queue's consumer tag, so the gate reads the task consumer's own.

    A reception closes the gate at once (a solo worker runs the message inside the handler,
    and its acknowledgement must refill nothing), except while kombu waits for a
    ``consume-ok``: it starts consuming the last queue with a ``basic.consume`` that waits
    for its reply and hands the deliveries read meanwhile to the worker. A cancel of that
    consumer sent before RabbitMQ's channel has sent the ``consume-ok`` crashes the channel
    in RabbitMQ (``badkey`` in ``consumer_monitor``), and the worker's unacknowledged
    messages go back to their queues to be delivered a second time; such a close waits for
    the worker's event loop.

    The gate's own verbs are ``close_bulk`` and ``open_bulk``: ``close(parent)`` is the
    bootstep's hook that Celery calls as the worker stops.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "bulk lane gate"

    def __init__(self, c, **kwargs):
        self.consumer = None
        self.task_consumer = None
        self.closed = False
        self.closing = False  # a close is queued on the event loop
        self.cancelled: list[str] = []  # consumer tags whose callbacks go once the gate opens
        self.idle_since: float | None = None
        self.entry = None
        self.connection = None
        super().__init__(c, **kwargs)

    def include_if(self, c) -> bool:
        from tasks.brokers import kind

        settings = getattr(c.app, "specq_settings", None)
        return (settings is not None and kind(settings).startswith("rabbitmq")
                and getattr(c, "hub", None) is not None)

    def start(self, c) -> None:
        self.consumer, self.task_consumer = c, c.task_consumer
        self.closed, self.closing, self.cancelled, self.idle_since = False, False, [], None
        signals.task_received.connect(self._on_received, weak=False)

    def stop(self, c) -> None:
        signals.task_received.disconnect(self._on_received)
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None
        if self.connection is not None:
            self.connection.release()
            self.connection = None
        self.task_consumer = None

    shutdown = stop

    def gated(self) -> list[tuple[str, str]]:
        """``(ordinary, bulk)`` queue pairs of which the worker consumes the ordinary queue."""
        from tasks.lanes import BULK, ORDINARY, lane_queue, split

        pairs = []
        for queue in self.task_consumer.queues:
            device, lane = split(queue.name)
            if lane == BULK and self.task_consumer.consuming_from(lane_queue(device, ORDINARY)):
                pairs.append((lane_queue(device, ORDINARY), queue.name))
        return pairs

    def _on_received(self, sender=None, **_) -> None:
        if sender is not self.consumer or self.task_consumer is None or self.closed or self.closing:
            return
        if self._consume_awaited():
            self.closing = True
            self.consumer.hub.call_soon(self._close_queued, self.task_consumer)
        else:
            self.close_bulk()

    def _consume_awaited(self) -> bool:
        """Whether kombu is waiting for a ``consume-ok`` on the task channel (py-amqp keeps the
        reply it waits for as pending)."""
        from amqp import spec

        pending = getattr(self.task_consumer.channel, "_pending", None)
        return isinstance(pending, dict) and spec.Basic.ConsumeOk in pending

    def _close_queued(self, task_consumer) -> None:
        self.closing = False
        if task_consumer is not self.task_consumer:  # a consumer the worker restarted since
            return
        try:
            self.close_bulk()
        except (OSError, *_errors_of(self.consumer.connection)) as exc:
            # The connection broke in this loop turn: the worker restarts its consumer, and the gate with it.
            log.debug("bulk lane gate: not closed, the connection is gone (%s)", exc)

    def close_bulk(self) -> None:
        """Cancel the bulk consumers of the gated queues; watch for the worker to be idle."""
        if self.closed:
            return
        tc = self.task_consumer
        for _, bulk in self.gated():
            tag = tc._active_tags.pop(bulk, None)
            getattr(tc, "_active_queue_no_ack", {}).pop(bulk, None)
            if tag is not None:
                tc.channel.basic_cancel(tag, nowait=True)
                self.cancelled.append(tag)
        self.closed, self.idle_since = True, None
        self._schedule()

    def open_bulk(self) -> None:
        """Consume the gated bulk queues again."""
        tc = self.task_consumer
        queues = {q.name: q for q in tc.queues}
        for _, bulk in self.gated():
            if bulk in queues:
                tc._basic_consume(queues[bulk], no_ack=tc.no_ack, nowait=True)
        # Cancelled without waiting for cancel-ok: their callbacks are dropped by hand, long
        # after any delivery sent before the cancel (a stray one would be requeued, not lost).
        for tag in self.cancelled:
            tc.channel.callbacks.pop(tag, None)
            tc.channel.cancel_callbacks.pop(tag, None)
        self.cancelled, self.closed = [], False

    def _schedule(self) -> None:
        self.entry = self.consumer.hub.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        from celery.worker import state

        self.entry = None
        if not self.closed or self.task_consumer is not self.consumer.task_consumer:
            return
        try:
            if self._may_open(bool(state.reserved_requests)):
                self.open_bulk()
        finally:
            # Whatever a look raised, a closed gate looks again: it is never shut for good.
            if self.closed:
                self._schedule()

    def _may_open(self, busy: bool) -> bool:
        """Whether the worker has been idle for :data:`GRACE_S` and no ordinary message is ready."""
        now = time.monotonic()
        if busy:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
        elif now - self.idle_since >= GRACE_S:
            if not self._ordinary_waiting():
                return True
            self.idle_since = now  # on its way to a consumer: ask again after another grace
        return False

    def _ordinary_waiting(self) -> bool:
        """Whether a gated ordinary queue holds a ready message; False when RabbitMQ cannot be asked."""
        names = [ordinary for ordinary, _ in self.gated()]
        if not names:
            return False
        try:
            if self.connection is None:
                self.connection = self.consumer.app.connection_for_read(
                    connect_timeout=CHECK_TIMEOUT_S,
                    transport_options={"read_timeout": CHECK_TIMEOUT_S, "write_timeout": CHECK_TIMEOUT_S,
                                       "max_retries": 1})
            channel = self.connection.default_channel
            return any(channel.queue_declare(queue=name, passive=True).message_count for name in names)
        except (OSError, OperationalError, *self._errors()) as exc:
            # OperationalError: what kombu raises when it cannot connect at all.
            # Bulk work must not stop because a look failed: open, and look again next time.
            log.warning("bulk lane gate: cannot read the ordinary lanes (%s); serving the bulk lane", exc)
            if self.connection is not None:
                self.connection.collect()
                self.connection = None
            return False

    def _errors(self) -> tuple[type[BaseException], ...]:
        return _errors_of(self.connection or self.consumer.connection)


def _errors_of(connection) -> tuple[type[BaseException], ...]:
    """A kombu connection's connection and channel errors (none for no connection)."""
    return () if connection is None else (*connection.connection_errors, *connection.channel_errors)
