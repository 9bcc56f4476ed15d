"""Lanes: every device queue carries ordinary work, served first, and bulk work.

The ordinary lane takes what ``watch``, ``enqueue`` and :func:`tasks.producer.submit`
send by default: new spectra that people wait for. The bulk lane takes reprocessings
(``specq enqueue --bulk``, ``submit(..., bulk=True)``), which go on whenever the ordinary
lane is empty.

Each lane is a broker queue of its own: ``gpu`` (ordinary) and ``gpu.bulk`` (bulk). A
worker consumes its ordinary queues before its bulk queues, and each broker is told to
keep that order instead of taking turns:

* Redis and the embedded broker: the worker asks its queues in order at every fetch
  (``queue_order_strategy = "priority"``; :class:`tasks.embedded.Channel` likewise);
* RabbitMQ pushes from every queue a worker consumes; its prefetch limit is counted per
  consumer (:class:`tasks.brokers.RabbitMQTransport`), so a new ordinary message reaches
  the worker at once, and a worker keeps its bulk consumers cancelled while it has work
  (:mod:`tasks.lane_gate`), so a stream of ordinary messages does not take turns with bulk ones.

Separate queues rather than the brokers' message priorities: RabbitMQ's quorum queues
(before 4.0) have no priorities, Redis's emulated ones are silently skipped when a worker
prefetches, and a queue per lane shows its own depth (``specq status``). A site that keeps
a worker for one lane sets ``SPECQ_LANES=ordinary`` (or ``bulk``) for it.
"""
from __future__ import annotations

from typing import Iterable

from workers.settings import LANES, Settings

ORDINARY, BULK = LANES
BULK_SUFFIX = ".bulk"


def lane_queue(queue: str, lane: str = ORDINARY) -> str:
    """The broker queue of ``lane`` on device queue ``queue`` (``gpu`` → ``gpu`` or ``gpu.bulk``)."""
    if lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}: use one of {', '.join(LANES)}")
    return queue + BULK_SUFFIX if lane == BULK else queue


def split(name: str) -> tuple[str, str]:
    """``(device queue, lane)`` of a broker queue name (``gpu.bulk`` → ``("gpu", "bulk")``)."""
    if name.endswith(BULK_SUFFIX):
        return name[: -len(BULK_SUFFIX)], BULK
    return name, ORDINARY


def lane_queues(device_queues: Iterable[str], lanes: Iterable[str] = LANES) -> list[str]:
    """The broker queues of ``lanes`` on ``device_queues``: every ordinary one before any bulk one."""
    queues = list(dict.fromkeys(device_queues))
    return [lane_queue(q, lane) for lane in LANES if lane in set(lanes) for q in queues]


def served_queues(asked: Iterable[str], settings: Settings) -> list[str]:
    """The broker queues a worker consumes, in the order it serves them.

    Parameters
    ----------
    asked : iterable of str
        What the worker was started with (``-Q``, else every queue): device queues
        (``gpu``) stand for the lanes the worker serves (``settings.served_lanes``); a
        bulk lane named without its device queue (``-Q gpu.bulk``) is served as named.
    settings : Settings

    Returns
    -------
    list of str
        Ordinary queues first, then bulk queues.
    """
    asked = list(asked)
    wanted: set[str] = set()
    for name in asked:
        queue, _ = split(name)
        # A device queue stands for its lanes (a worker without -Q is given both lanes of each).
        wanted |= {lane_queue(queue, s) for s in settings.served_lanes} if queue in asked else {name}
    devices = [split(name)[0] for name in asked]
    return [name for name in lane_queues(devices) if name in wanted]

