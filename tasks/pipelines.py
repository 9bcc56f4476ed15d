"""The queue's task signatures: one task per pipeline, a list of references per message.

The bodies hand over to ``workers.runner`` (imported inside the task, so producers that
import this module never load torch). The task is a thin adapter: ``specq run`` calls
the same engine in-process.
"""
from __future__ import annotations

from tasks.app import TASK_NAMES, app


@app.task(name=TASK_NAMES["bossnet"], bind=True)
def bossnet(self, refs: list[dict], options: dict | None = None) -> dict:
    """Run BossNet on ``refs`` (JSON spectrum references); write one row per spectrum."""
    from workers.runner import run_task

    return run_task(self, "bossnet", refs, options or {})


@app.task(name=TASK_NAMES["astronn_dist"], bind=True)
def astronn_dist(self, refs: list[dict], options: dict | None = None) -> dict:
    """Run AstroNN distances on ``refs``; write one row per spectrum."""
    from workers.runner import run_task

    return run_task(self, "astronn_dist", refs, options or {})


TASKS = {"bossnet": bossnet, "astronn_dist": astronn_dist}
