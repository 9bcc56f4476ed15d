"""``specq status``: what the queue and the workers are doing, at a glance."""
from __future__ import annotations

from workers.settings import Settings


def queue_depths(settings: Settings) -> dict[str, dict]:
    """Messages waiting in each lane of each queue, and the oldest's age where the broker tells.

    ``{queue: {"ordinary": {...}, "bulk": {...}}}`` (see :func:`tasks.brokers.lane_depths`).
    """
    from tasks.app import worker_queues
    from tasks.brokers import lane_depths

    return lane_depths(settings, worker_queues(settings))


def collect(settings: Settings, timeout: float = 1.0) -> dict:
    """Queue depths, live workers, result counts, throughput and dead letters."""
    from workers.remote import redact
    from workers.store import ResultStore
    from workers.store_check import redact_url

    # Without passwords: status output ends up in logs and tickets.
    info: dict = {"broker": redact_url(settings.broker), "database": redact_url(settings.database),
                  "data_root": redact(str(settings.data_root))}
    try:
        info["queues"] = queue_depths(settings)
    except Exception as exc:  # status must report a broken broker, not crash on it
        from tasks.brokers import describe_error

        info["queues_error"] = describe_error(exc, settings)
    live: set[str] = set()
    if not settings.embedded and "queues_error" not in info:  # a broker not answering is said once
        from tasks import app

        try:
            replies = app.control.inspect(timeout=timeout).ping() or {}
            live.update(replies)
            info["workers"] = sorted(live)
        except Exception as exc:  # a dead broker is reported above
            info["workers_error"] = f"{type(exc).__name__}: {exc}"
    try:
        # A solo worker busy with a message cannot answer the ping: its heartbeat still counts.
        # A stale heartbeat (a killed worker) does not: it is shown apart, with its age.
        from tasks.heartbeat import read_heartbeats

        info["heartbeats"] = read_heartbeats(settings)
        fresh = {str(h.get("hostname")) for h in info["heartbeats"] if not h.get("stale")}
        stale = {str(h.get("hostname")) for h in info["heartbeats"] if h.get("stale")}
        live.update(fresh)
        info["workers"] = sorted(live)
        info["stale_workers"] = sorted(stale - live)
    except Exception as exc:  # a dead broker is reported above
        info["heartbeats_error"] = f"{type(exc).__name__}: {exc}"
    _broker_health(settings, info)
    from tasks.watch import long_incomplete

    info["incomplete_files"] = long_incomplete(settings)
    from specq.checks import demo_store_hint, missing_sqlite_store

    missing = missing_sqlite_store(settings.database)
    if missing:  # a look must not make an empty store (later reads would find it, and no rows)
        info["store_missing"] = f"no result database at {missing}{demo_store_hint(settings)}"
        return info
    store = ResultStore(settings.database)
    try:
        info["results"] = {p: store.count(p) for p in store.tables}
        info["demo_rows"] = store.demo_counts()
        info["throughput_per_min"] = store.recent_rate(minutes=5)
        dead = store.dead_letter_rows()
        info["dead_letters"] = sum(1 for d in dead if not d.get("requeued"))
        info["dead_letters_requeued"] = len(dead) - info["dead_letters"]
        from workers import ledger

        info["sent_unfinished"] = ledger.summary(store)
    except Exception as exc:  # an unreachable database is worth reporting, not a traceback
        from specq.checks import one_line

        info["store_error"] = f"{type(exc).__name__}: {one_line(exc)}"  # the driver's own words, not SQLAlchemy's page
    return info


def _broker_health(settings: Settings, info: dict) -> None:
    """Whether the broker keeps what it is given, and the messages workers hold (long ones apart)."""
    from tasks.brokers import held_ages, persistence_warnings

    try:
        info["broker_warnings"] = persistence_warnings(settings)
        ages = held_ages(settings)
    except Exception as exc:  # an unreachable broker is reported with the queues
        info.setdefault("queues_error", f"{type(exc).__name__}: {exc}")
        return
    # A message takes well under the visibility timeout; one held for half of it is stuck
    # (or its worker was killed, and Redis gives it to another at the timeout).
    limit = settings.visibility_timeout / 2
    info["held"] = {"messages": len(ages), "oldest_s": ages[0] if ages else None, "limit_s": limit,
                    "too_long_s": [a for a in ages if a > limit]}


def render(info: dict) -> str:
    lines = [f"broker:   {info['broker']}", f"database: {info['database']}"]
    if "data_root" in info:
        lines.append(f"data:     {info['data_root']}")
    for q, lanes in info.get("queues", {}).items():
        for i, (lane, d) in enumerate(lanes.items()):
            age = d.get("oldest_s")
            lines.append(f"{'queue ' + q if i == 0 else '':<14} {lane:<8} waiting {d['waiting']:>7}"
                         + (f"   oldest {age:.0f} s" if age is not None else "")
                         + (f"   in flight {d['in_flight']}" if d.get("in_flight") else ""))
    for key in ("queues_error", "workers_error", "heartbeats_error", "store_error"):
        if key in info:
            lines.append(f"{key.replace('_', ' ')}: {info[key]}")
    lines += [f"WARNING: {w}" for w in info.get("broker_warnings", [])]
    held = info.get("held")
    if held and held["messages"]:
        lines.append(f"held by workers (taken, not acknowledged): {held['messages']}, "
                     f"the oldest for {held['oldest_s']:.0f} s")
        if held["too_long_s"]:
            lines.append(f"  held longer than expected (over {held['limit_s']:.0f} s): {len(held['too_long_s'])}, "
                         "for " + ", ".join(f"{a:.0f} s" for a in held["too_long_s"][:5])
                         + " (a worker stuck or killed: Redis hands them out again after SPECQ_VISIBILITY_TIMEOUT)")
    if "workers" in info:
        lines.append(f"workers: {len(info['workers'])} live")
        lines += [f"  {line}" for w in info["workers"] for line in _worker_lines(w, info.get("heartbeats", []))]
    for w in info.get("stale_workers", []):
        ages = [h["age_s"] for h in info.get("heartbeats", []) if str(h.get("hostname")) == w]
        lines.append(f"stale worker {w}: no heartbeat for {min(ages):.0f} s (killed or hung; not counted live)")
    if "store_missing" in info:
        lines.append(f"results: {info['store_missing']}")
    results = info.get("results", {})
    width = max(map(len, results), default=0)  # one column of counts, whatever the pipelines are called
    for p, n in results.items():
        rate = info.get("throughput_per_min", {}).get(p, 0.0)
        demo = info.get("demo_rows", {}).get(p, 0)
        lines.append(f"results {p:<{width}} {n:>8} rows   {rate:.1f} rows/min (last 5 min)"
                     + f"   {demo} with demo weights")
    if "dead_letters" in info:
        requeued = info.get("dead_letters_requeued")
        lines.append(f"dead letters: {info['dead_letters']}" + (f" ({requeued} more requeued)" if requeued else "")
                     + ("   (specq dead-letters list)" if info["dead_letters"] else ""))
    for f in info.get("incomplete_files", []):
        lines.append(f"watch: {f['path']} incomplete for {f['age_s']:.0f} s, not sent: {f['reason']}")
    sent = info.get("sent_unfinished")
    if sent is not None:
        lines.append(f"sent, not finished: {sent['unfinished']}"
                     + (f"   oldest sent {sent['oldest_s']:.0f} s ago   (specq status --unfinished; "
                        "specq reconcile sends again those older than the visibility timeout "
                        "and no longer in the broker)"
                        if sent["unfinished"] else ""))
    return "\n".join(lines)




def _worker_lines(hostname: str, heartbeats: list[dict], now: float | None = None) -> list[str]:
    """A worker's line, then one per process with its heartbeat: what it works on, since when."""
    import time

    now = time.time() if now is None else now
    mine = [h for h in heartbeats if h.get("hostname") == hostname and not h.get("stale")]
    lines = [hostname]
    for h in mine:
        where = f"pid {h.get('pid')}" + (f", {h['pool']}" if h.get("pool") else "")
        if h.get("age_s") is not None:
            where += f", heartbeat {h['age_s']:.0f} s ago"
        tasks = h.get("tasks") or []
        if not tasks:
            lines.append(f"  {where}: idle")
        for t in tasks:
            lines.append(f"  {where}: busy {now - float(t.get('since', now)):.0f} s with {t.get('pipeline')} "
                         f"task {t.get('task_id')} ({t.get('refs')} references)")
    return lines
