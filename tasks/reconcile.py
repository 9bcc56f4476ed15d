"""``specq reconcile``: send again what was sent and never finished.

The ledger (:mod:`workers.ledger`) holds every reference published and not yet settled
by a row. One still there long after it was sent was lost on the way (a broker that
restarted without its queue, a message purged) or is stuck: sending it again is safe,
because a row is keyed by its spectrum and model, so a spectrum that does finish twice
still has one row.

A reference whose message the broker still holds, waiting in a queue however long or
taken by a worker and not acknowledged, is left alone: it is not lost, only not done yet
(a reprocessing's backlog). Redis and the embedded broker are read for the task ids they
hold; RabbitMQ cannot be read without taking its messages, so there the age alone decides.
The default age is the visibility timeout: a message a worker holds comes back by
itself within it, so only what is older was lost. The references go to the ordinary lane,
or with ``bulk`` to the bulk lane (``specq reconcile --bulk``: what a reprocessing lost
goes back behind the new spectra). How messages are sent is one function (``send``,
default :func:`tasks.producer.send_message`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from workers import ledger
from workers.settings import Settings


@dataclass
class Reconciled:
    """What :func:`reconcile` found, and sent unless it was a dry run."""

    older_than_s: float
    found: list[ledger.Unfinished] = field(default_factory=list)
    task_ids: dict[str, list[str]] = field(default_factory=dict)  # pipeline → messages sent
    dry_run: bool = False
    bulk: bool = False
    still_held: int = 0  # unfinished references whose message the broker still holds: left alone
    broker_read: bool = True  # False where the broker's messages cannot be read (RabbitMQ)

    def lines(self) -> list[str]:
        """A line per pipeline, for the command line."""
        notes = []
        if self.still_held:
            notes.append(f"left alone: {self.still_held} unfinished reference(s) whose message the broker still "
                         f"holds (waiting in a queue, or in a worker's hands)")
        if not self.broker_read:
            notes.append("the broker's messages cannot be read without taking them (RabbitMQ): references older "
                         "than the limit are sent again even where their message still waits (each spectrum "
                         "still gets one row)")
        if not self.found:
            return [f"nothing unfinished older than {self.older_than_s:.0f} s"
                    + (" that the broker does not hold" if self.still_held else "")] + notes
        by_pipeline: dict[str, int] = {}
        for u in self.found:
            by_pipeline[u.pipeline] = by_pipeline.get(u.pipeline, 0) + 1
        verb = "would send again" if self.dry_run else "sent again"
        lane = " (bulk lane)" if self.bulk else ""
        return [f"{p}: {verb} {n} unfinished reference(s)"
                + ("" if self.dry_run else f" in {len(self.task_ids.get(p, []))} message(s)") + lane
                for p, n in sorted(by_pipeline.items())] + notes


def reconcile(store, settings: Settings, older_than_s: float | None = None, *, dry_run: bool = False,
              bulk: bool = False, send: Callable[..., str] | None = None) -> Reconciled:
    """Send again the references unfinished for longer than ``older_than_s`` seconds.

    Parameters
    ----------
    store : ResultStore
        Where the ledger is (the workers' result store).
    settings : Settings
    older_than_s : float, optional
        Default: ``settings.visibility_timeout``.
    dry_run : bool
        Find them, send nothing.
    bulk : bool
        Into the bulk lane of each queue (default: the ordinary lane).
    send : callable, optional
        ``send(pipeline, payload, options, settings=…, bulk=…) -> task id``; default
        :func:`tasks.producer.send_message`, which records the new send in the ledger.

    Returns
    -------
    Reconciled
    """
    from tasks.app import worker_queues
    from tasks.brokers import held_task_ids
    from tasks.lanes import lane_queues

    if send is None:
        from tasks.producer import send_message as send
    limit = float(settings.visibility_timeout if older_than_s is None else older_than_s)
    # The broker first, then the ledger: a message that finishes in between is settled by then.
    held = held_task_ids(settings, lane_queues(worker_queues(settings)))
    found = ledger.unfinished(store, older_than_s=limit)
    still_held = [u for u in found if held is not None and u.task_id in held]
    found = [u for u in found if not (held is not None and u.task_id in held)]
    result = Reconciled(limit, found, dry_run=dry_run, bulk=bulk, still_held=len(still_held),
                        broker_read=held is not None)
    if dry_run:
        return result
    # The same options travel together; each pipeline's usual message size.
    groups: dict[tuple[str, str], list[ledger.Unfinished]] = {}
    for u in found:
        groups.setdefault((u.pipeline, json.dumps(u.options, sort_keys=True)), []).append(u)
    for (pipeline, options), entries in groups.items():
        size = settings.chunk_size_for(pipeline)
        ids = result.task_ids.setdefault(pipeline, [])
        for i in range(0, len(entries), size):
            payload = [u.ref for u in entries[i:i + size]]
            ids.append(send(pipeline, payload, json.loads(options), settings=settings, bulk=bulk))
    return result


def unfinished_lines(store, limit: int | None = None) -> list[str]:
    """``specq status --unfinished``: one line per reference sent and not finished, oldest first."""
    found = ledger.unfinished(store, limit=limit)
    if not found:
        return ["no unfinished references: every one sent has its row"]
    return [f"{u.pipeline:<13} {u.spectrum_key}   sent {u.age_s():.0f} s ago ({u.sent:%Y-%m-%d %H:%M:%S} UTC)"
            f"   task {u.task_id}" + (f"   sent {u.sends} times" if u.sends > 1 else "")
            for u in found]
