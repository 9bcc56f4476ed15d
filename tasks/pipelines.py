"""The queue's task signatures: one task per registered pipeline, a list of references per message.

Each body hands over to ``tasks.runner`` (imported inside the task, so producers that
import this module never load torch). The task is a thin adapter: ``specq run`` calls
the same engine in-process. The tasks are shared (Celery's ``shared_task``): any app,
built now or later, has them, and importing this module builds none.
"""
from __future__ import annotations

from celery import shared_task

from workers import registry


def _register(spec: registry.PipelineSpec):
    def body(self, refs: list[dict], options: dict | None = None) -> dict:
        from tasks.runner import run_task

        return run_task(self, spec.name, refs, options or {})

    body.__name__ = spec.name
    body.__doc__ = f"Run {spec.title} on ``refs`` (JSON spectrum references); write one row per spectrum."
    return shared_task(name=spec.task_name, bind=True)(body)


for _spec in registry.pipelines().values():
    _register(_spec)

# The worker's lifecycle: checks at start-up, metrics, heartbeat, log context, shutdown.
import tasks.lifecycle  # noqa: E402,F401
