"""``specq dead-letters``: list the messages workers gave up on, and send them again.

A message is dead-lettered when it was delivered more than ``max_redeliveries`` times
without finishing (it kept killing its worker): its spectra got flagged rows and its
references were kept in the result store's ``dead_letters`` table. Once the cause is
fixed (a corrupt file replaced, more memory), ``requeue`` sends the stored references
again as one new message; its results replace the flagged rows.
"""
from __future__ import annotations

from typing import Sequence


def list_lines(store) -> list[str]:
    """One line per dead letter: id, when, pipeline, references, deliveries, reason, requeued."""
    rows = store.dead_letter_rows()
    if not rows:
        return ["no dead letters"]
    lines = [f"{'id':>5}  {'created':<19}  {'pipeline':<13} {'refs':>5} {'deliv':>5}  reason"]
    for r in rows:
        created = r["created"].strftime("%Y-%m-%d %H:%M:%S") if r.get("created") else "?"
        state = (f"  [requeued {r['requeued']:%Y-%m-%d %H:%M:%S} as {r['requeue_task_id']}]"
                 if r.get("requeued") else "")
        first = _first_path(r.get("refs"))
        lines.append(f"{r['id']:>5}  {created:<19}  {r['pipeline']:<13} {r['n_refs']:>5} {r['deliveries']:>5}  "
                     f"{r['reason']}" + (f"  (first: {first})" if first else "") + state)
    return lines


def _first_path(refs) -> str:
    if isinstance(refs, list) and refs and isinstance(refs[0], dict):
        return str(refs[0].get("path", ""))
    return ""


def requeue(store, ids: Sequence[int] | None, *, force: bool = False, settings=None) -> tuple[list[str], int]:
    """Send dead letters again; returns the lines to print and the exit status.

    Parameters
    ----------
    store : ResultStore
    ids : sequence of int or None
        Dead letters to send; None: every one not requeued yet.
    force : bool
        Also send those already requeued once.
    settings : Settings, optional
        The producer's settings (default: the Celery app's).

    Returns
    -------
    lines : list of str
    status : int
        0 when every dead letter asked for was sent; 2 when an id is unknown or was
        already requeued (without ``force``).
    """
    from tasks.producer import send_message

    rows = store.dead_letter_rows(ids)
    lines: list[str] = []
    status = 0
    if ids is not None:
        missing = sorted(set(ids) - {r["id"] for r in rows})
        if missing:
            lines.append(f"no dead letter with id {', '.join(map(str, missing))}")
            status = 2
    for r in rows:
        if r.get("requeued") and not force:
            if ids is not None:  # asked for by id: say why nothing happened
                lines.append(f"dead letter {r['id']} was already requeued as {r['requeue_task_id']}; "
                             f"--force sends it again")
                status = 2
            continue
        refs = r["refs"] if isinstance(r["refs"], list) else [r["refs"]]
        task_id = send_message(r["pipeline"], refs, settings=settings)
        store.mark_requeued(r["id"], task_id)
        lines.append(f"dead letter {r['id']}: {len(refs)} references sent to {r['pipeline']} as {task_id}")
    if not lines:
        lines.append("nothing to requeue")
    return lines, status
