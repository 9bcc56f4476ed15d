"""``specq bench --feed``: how fast this host can feed a device, one input format at a time.

The network is replaced by the null model (:mod:`workers.null`), which answers at once, so
what is measured is everything around a network: the worker's whole path from a real queue
through listing, reading, batching and row building to the result store.

For each input format (spec-lite, mwmVisit, mwmStar: BOSS; apStar: APOGEE) it prints:

* **stages**, ms per spectrum, measured one after the other in this process with one
  reader: ``list`` (a file → its spectrum references, as the producer does it), ``read``
  (reference → spectrum), ``pack`` (the host-side preparation of a batch: one contiguous
  float32 array, what a device copy takes), ``rows`` (result rows built), ``write`` (rows
  new to the store, one message's worth at a time, on a connection already open; the best
  of as many rounds of the sample as make :data:`WRITE_ROWS` rows, up to :data:`WRITE_ROUNDS`);
* **feed**: spectra/s the engine delivers to a device with 1 and N readers (reading,
  batching and packing; no store), for process and thread readers — the device rate this
  host can keep busy;
* **queue**: spectra/s end to end through a broker and a real worker process with its
  default readers (from before the references are enqueued to the last row), and the
  **message overhead**: its ms per spectrum beyond the same path run in-process (engine
  with N readers, then the store);
* **queue, steady**: the rate the worker keeps once messages stream in, where the
  references make more than one message (the pipeline's chunk size): the spectra of the
  messages after the first over the time from the first message's rows to the last's.
  The enqueue and the first message's start (the worker taking it, the first reads before
  any rows) are left out, as a worker fed by a stream does not pay them again.

Where: Redis and PostgreSQL when they answer, else the embedded broker and SQLite. Each
table names the CPU's vector ISA (torch's ``get_cpu_capability()``), the processor's family and
model, and the load average.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workers.readers.formats import FORMAT_TABLE

#: The SDSS products (those named by a convention): the inputs the feed bench writes and times.
FEED_FORMATS = tuple(fmt.name for fmt in FORMAT_TABLE if fmt.file_glob)
NULL_PLUGIN = "workers.null.spec"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/specq_bench"
STAGES = ("list", "read", "pack", "rows", "write")
WRITE_ROWS = 4096  # rows the write stage times at least, in rounds of the sample (a write takes milliseconds)
WRITE_ROUNDS = 32  # and rounds at most, for a small sample
EMBEDDED = "embedded"  # --broker embedded: the embedded broker even where Redis answers


@dataclass
class FeedResult:
    """One format's feed measurement (times in ms per spectrum, rates in spectra/s)."""

    format: str
    pipeline: str
    spectra: int
    files: int
    store: str
    broker: str
    readers: int
    visits: int | None = None  # BOSS visits in each mwmVisit file (None: the synthetic set's 2-3)
    stages_ms: dict = field(default_factory=dict)
    feed_per_s: dict = field(default_factory=dict)  # "1 process", "2 process", "2 thread" → spectra/s
    in_process_per_s: float = 0.0  # engine with the worker's readers, then the store
    queue_per_s: float | None = None
    queue_steady_per_s: float | None = None  # after the first message (None: one message)
    queue_messages: int = 0
    message_overhead_ms: float | None = None
    cpu_capability: str = ""
    load: tuple = ()

    @property
    def one_reader_per_s(self) -> float:
        """Spectra/s of the stages run one after the other (one reader, nothing overlapped)."""
        total = sum(self.stages_ms.values())
        return 1000.0 / total if total else float("nan")


@contextlib.contextmanager
def null_pipelines():
    """The null pipelines registered in this process and in the workers it starts, until the block ends."""
    before = os.environ.get("SPECQ_PLUGINS")
    plugins = [m for m in (before or "").split(",") if m.strip()]
    if NULL_PLUGIN not in plugins:
        os.environ["SPECQ_PLUGINS"] = ",".join([*plugins, NULL_PLUGIN])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SPECQ_PLUGINS", None)
        else:
            os.environ["SPECQ_PLUGINS"] = before


def postgres_url(url: str = DEFAULT_POSTGRES) -> str | None:
    """``url`` when its server answers (its database created if missing), else None."""
    import sqlalchemy as sa

    base, _, name = url.rpartition("/")
    try:
        engine = sa.create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT",
                                  connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return url
    except (sa.exc.OperationalError, sa.exc.ProgrammingError, ImportError):
        return None


def _clear(store, pipeline: str) -> None:
    """Empty ``pipeline``'s table (PostgreSQL: ``TRUNCATE``, so no dead rows slow the next writes)."""
    import sqlalchemy as sa

    store.create()
    table = store.tables[pipeline]
    with store.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(f"TRUNCATE {conn.dialect.identifier_preparer.format_table(table)}"))
        else:
            conn.execute(sa.delete(table))


def _best(call, repeat: int, before=None) -> float:
    """The fastest of ``repeat`` timings of ``call()``, in seconds (``before()`` untimed ahead of each)."""
    best = float("inf")
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best


def _wait_until_settled(files: list[Path]) -> None:
    """Wait until every file of the data set counts as settled for the readers (see
    :func:`workers.readers.native.settled_at`): they are then read as a worker finds a
    survey's data area, written earlier, and not as files that landed a moment ago."""
    from workers.readers.native import settled_at

    time.sleep(max(0.0, max(settled_at(path) for path in files) - time.time() + 0.05))


def measure_format(fmt: str, n_spectra: int, work: Path, store_url: str, broker_url: str | None,
                   readers: int, repeat: int = 2, queue: bool = True, seed: int = 1,
                   visits: int | None = None) -> FeedResult:
    """Measure one input format (see the module docstring)."""
    from specq.bench.report import cpu_label
    from specq.testing.synthetic import make_dataset
    from tasks.producer import expand_file
    from workers import engine
    from workers import row as result_row
    from workers.null.pipeline import pack
    from workers.store import ResultStore

    instrument = "apogee" if fmt == "apStar" else "boss"
    name = f"null_{instrument}"
    data_root = work / fmt / "data"
    truth = make_dataset(data_root, n_boss=n_spectra if instrument == "boss" else 0,
                         n_apogee=n_spectra if instrument == "apogee" else 0, seed=seed, formats=[fmt],
                         visits=visits)
    files = sorted(set(truth["path"]))
    _wait_until_settled([data_root / f for f in files])
    pipeline = engine.get_pipeline(name, _settings())
    result = FeedResult(fmt, name, 0, len(files), _redact(store_url), _redact(broker_url or "embedded filesystem"),
                        readers, visits=visits if fmt == "mwmVisit" else None, cpu_capability=cpu_label(),
                        load=tuple(round(x, 2) for x in os.getloadavg()))

    refs: list = []

    def listing():
        refs[:] = [r for f in files for r in expand_file(f, [name], data_root)[0].get(name, [])]

    t_list = _best(listing, repeat)
    n = result.spectra = len(refs)
    jobs: list = []

    def reading():
        jobs[:] = [job for ref in refs for job in engine.read_jobs(ref, data_root, instrument)]

    t_read = _best(reading, repeat)
    spectra = [job.spectrum for job in jobs]
    size = pipeline.batch_size
    t_pack = _best(lambda: [pack(spectra[i:i + size]) for i in range(0, n, size)], repeat)
    predicted = [row for i in range(0, n, size) for row in pipeline.predict(spectra[i:i + size])]
    rows: list = []

    def building():
        rows[:] = [result_row.build(pipeline, job.ref, job.spectrum, result=row) for job, row in zip(jobs, predicted)]

    t_rows = _best(building, repeat)
    store = ResultStore(store_url)
    chunk = _settings().chunk_size_for(name)

    def writing():
        for i in range(0, n, chunk):
            store.write(name, rows[i:i + chunk])

    _clear(store, name)
    writing()  # untimed: the connection, its staging table and prepared statements, as a running worker has them
    # Each round writes rows new to the table, as a worker's writes are; WRITE_ROWS rows timed at least.
    rounds = max(repeat, min(-(-WRITE_ROWS // max(n, 1)), WRITE_ROUNDS))
    t_write = _best(writing, rounds, before=lambda: _clear(store, name))
    result.stages_ms = {stage: round(seconds * 1000 / n, 4) for stage, seconds in
                        zip(STAGES, (t_list, t_read, t_pack, t_rows, t_write))}
    del jobs[:], spectra[:], rows[:], predicted[:]

    for count, kind in ((1, "process"), (readers, "process"), (readers, "thread")):
        if f"{count} {kind}" in result.feed_per_s or (count == 1 and kind == "thread"):
            continue
        engine.process(pipeline, refs[:size], data_root, readers=count, reader_kind=kind)  # start the readers
        seconds = _best(lambda: sum(len(b) for b in engine.iter_process(pipeline, refs, data_root, readers=count,
                                                                        reader_kind=kind)), repeat)
        result.feed_per_s[f"{count} {kind}"] = round(n / seconds, 1)

    def in_process():
        produced = engine.process(pipeline, refs, data_root, readers=readers)
        for i in range(0, n, chunk):
            store.write(name, produced[i:i + chunk])

    result.in_process_per_s = round(n / _best(in_process, repeat), 1)
    if queue:
        end_to_end, steady, messages = _queue_rate(name, refs, data_root, work / fmt, store_url, broker_url,
                                                   readers, repeat)
        result.queue_per_s, result.queue_messages = round(end_to_end, 1), messages
        result.queue_steady_per_s = round(steady, 1) if steady is not None else None
        result.message_overhead_ms = round(1000 / result.queue_per_s - 1000 / result.in_process_per_s, 4)
    store.engine.dispose()
    return result


def _settings(**overrides):
    from workers.settings import load_settings

    return load_settings(**overrides)


def _redact(url: str) -> str:
    from workers.store_check import redact_url as redact

    return redact(url)


def _queue_rate(name: str, refs: list, data_root: Path, work: Path, store_url: str, broker_url: str | None,
                readers: int, repeat: int) -> tuple[float, float | None, int]:
    """Spectra/s through the broker and one real worker, best of ``repeat`` rounds: end to end,
    steady (after the first message; None for one message), and the messages of a round."""
    from specq.demo import start_worker, stop_worker
    from tasks.app import app, configure
    from tasks.producer import submit
    from workers.store import ResultStore

    env = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
    env.update({"SPECQ_STATE_DIR": str(work / "state"), "SPECQ_DATA_ROOT": str(data_root),
                "SPECQ_DATABASE_URL": store_url, "SPECQ_BROKER_URL": broker_url or "",
                "SPECQ_READERS": str(readers)})
    saved = {k: os.environ.get(k) for k in env if k.startswith("SPECQ_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("SPECQ_")})
    worker = None
    try:
        settings = _settings()
        configure(app, settings)
        store = ResultStore(settings.database)
        worker = start_worker(env, work / "worker.log", queues=settings.queue_for(name), name=f"feed-{name}")
        warm = submit(refs[:2], name, settings=settings, chunk_size=1)
        _wait(store, name, _ids(warm), len(refs[:2]), worker, work)
        best, steady, messages = float("inf"), None, 0
        for _ in range(repeat):
            _clear(store, name)
            t0 = time.time()
            sent = submit(refs, name, settings=settings)
            ids = _ids(sent)
            _wait(store, name, ids, len(refs), worker, work)
            ends, counts = _message_ends(store.rows(name), ids)
            best = min(best, ends[-1] - t0)
            messages = len(ends)
            rate = _steady_rate(ends, counts)
            if rate is not None:
                steady = rate if steady is None else max(steady, rate)
        store.engine.dispose()
        return len(refs) / best, steady, messages
    finally:
        if worker is not None:
            stop_worker(worker)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _message_ends(rows, ids: set[str]) -> tuple[list[float], list[int]]:
    """When each message's last row was written (in order) and its rows, for the messages ``ids``."""
    ends: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        task = row["task_id"]
        if task in ids:
            ends[task] = max(ends.get(task, 0.0), _seconds(row["created"]))
            counts[task] = counts.get(task, 0) + 1
    order = sorted(ends, key=ends.get)
    return [ends[t] for t in order], [counts[t] for t in order]


def _steady_rate(ends: list[float], counts: list[int]) -> float | None:
    """Spectra/s of the messages after the first, from the first message's end to the last's
    (:func:`_message_ends`); None for one message, or for messages that all ended at once."""
    if len(ends) < 2 or ends[-1] <= ends[0]:
        return None
    return sum(counts[1:]) / (ends[-1] - ends[0])


def _ids(submission) -> set[str]:
    return {t for ids in submission.task_ids.values() for t in ids}


def _wait(store, name: str, ids: set[str], n: int, worker, work: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while store.count(name, task_ids=ids) < n:
        if worker.poll() is not None:
            raise RuntimeError(f"the feed bench's worker exited; see {work / 'worker.log'}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the feed bench's worker did not finish; see {work / 'worker.log'}")
        time.sleep(0.2)


def _seconds(created) -> float:
    import datetime

    return (created if created.tzinfo else created.replace(tzinfo=datetime.timezone.utc)).timestamp()


def run_feed(formats=FEED_FORMATS, n_spectra: int = 512, broker_url: str | None = None, database_url: str | None = None,
             readers: int | None = None, repeat: int = 2, queue: bool = True, force: bool = False,
             workdir: Path | None = None, progress=None, visits: int | None = None) -> list[FeedResult]:
    """Measure every format in ``formats``; Redis and PostgreSQL when they answer, else embedded and SQLite.

    ``visits``: BOSS visits in each mwmVisit file (default 2–3, see
    :func:`specq.testing.synthetic.make_dataset`).
    """
    from specq.bench.queue import DEFAULT_REDIS, claim_redis, redis_reachable as _redis_reachable

    unknown = set(formats) - set(FEED_FORMATS)
    if unknown:
        raise ValueError(f"unknown format(s) {', '.join(sorted(unknown))}: use {', '.join(FEED_FORMATS)}")
    work = Path(workdir or tempfile.mkdtemp(prefix="specq-feed-"))
    store_url = database_url or postgres_url() or f"sqlite:///{work / 'feed.sqlite'}"
    url = None
    if queue and broker_url != EMBEDDED:
        url = broker_url or (DEFAULT_REDIS if _redis_reachable(DEFAULT_REDIS) else None)
        if url:
            claim_redis(url, force)
    count = readers or _settings().reader_count
    results = []
    with null_pipelines():
        for fmt in formats:
            results.append(measure_format(fmt, n_spectra, work, store_url, url, count, repeat, queue,
                                          visits=visits))
            if progress:
                progress(1)
    return results


def render_feed(results: list[FeedResult]) -> str:
    """The feed table: one column per format."""
    if not results:
        return "specq bench --feed: nothing measured"
    r0 = results[0]
    lines = [f"specq bench --feed — null model, store {r0.store}, broker {r0.broker}, "
             f"{r0.readers} readers, CPU {r0.cpu_capability}, load {' '.join(map(str, r0.load))}"]
    width = 12
    lines.append(f"  {'':<28}" + "".join(f"{r.format:>{width}}" for r in results))
    lines.append(f"  {'spectra (files)':<28}" + "".join(f"{f'{r.spectra} ({r.files})':>{width}}" for r in results))
    for stage in STAGES:
        lines.append(f"  {stage + ', ms/spectrum':<28}" + "".join(f"{r.stages_ms[stage]:>{width}.3f}" for r in results))
    lines.append(f"  {'write, rows/s':<28}" + "".join(f"{1000 / r.stages_ms['write']:>{width}.0f}" for r in results))
    lines.append(f"  {'one reader, spectra/s':<28}" + "".join(f"{r.one_reader_per_s:>{width}.0f}" for r in results))
    for key in results[0].feed_per_s:
        lines.append(f"  {'feed, ' + key + ' readers':<28}"
                     + "".join(f"{r.feed_per_s.get(key, float('nan')):>{width}.0f}" for r in results))
    lines.append(f"  {'in process + store, /s':<28}" + "".join(f"{r.in_process_per_s:>{width}.0f}" for r in results))
    if any(r.queue_per_s for r in results):
        lines.append(f"  {'queue, spectra/s':<28}" + "".join(f"{r.queue_per_s or float('nan'):>{width}.0f}"
                                                             for r in results))
        lines.append(f"  {'queue, steady, spectra/s':<28}"
                     + "".join(f"{r.queue_steady_per_s or float('nan'):>{width}.0f}" for r in results))
        lines.append(f"  {'queue, messages':<28}" + "".join(f"{r.queue_messages:>{width}d}" for r in results))
        lines.append(f"  {'message overhead, ms/sp.':<28}"
                     + "".join(f"{r.message_overhead_ms if r.message_overhead_ms is not None else float('nan'):>{width}.3f}"
                               for r in results))
    lines.append("  (stages: one reader, one after the other; feed: reading, batching and packing with N readers; "
                 "queue: one worker, its default readers, end to end; steady: after its first message)")
    return "\n".join(lines)


def as_dicts(results: list[FeedResult]) -> list[dict]:
    """The results as JSON-ready dicts."""
    return [{**asdict(r), "one_reader_per_s": r.one_reader_per_s} for r in results]


def main_feed(args) -> int:
    """``specq bench --feed``: print the table (and write JSON with ``--json``)."""
    import json

    import sys

    from specq.bench.queue import BenchRefused

    formats = [f.strip() for f in (args.formats or ",".join(FEED_FORMATS)).split(",") if f.strip()]
    try:
        results = run_feed(formats, n_spectra=args.spectra, broker_url=args.broker, database_url=args.database,
                           readers=args.readers, repeat=args.repeat, queue=not args.no_queue,
                           force=bool(getattr(args, "force", False)), visits=getattr(args, "visits", None))
    except (BenchRefused, ValueError) as exc:
        print(f"specq bench --feed: {exc}", file=sys.stderr)
        return 2
    print(render_feed(results), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(as_dicts(results), indent=2))
    return 0
