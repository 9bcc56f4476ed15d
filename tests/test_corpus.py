"""The bad-input corpus (tests/corpus.py) through a real worker, and row identity in `specq run`.

One integration test sends every kind of the corpus through Redis to a real
``celery -A tasks worker`` writing to PostgreSQL, then checks each kind's written outcome
and counts: inputs tried, rows written, refused at enqueue, retries, worker restarts (0)
and spectra lost (0). ``pytest -s`` prints the counts and the table.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

import corpus
from conftest import ROOT, producer_app, say, wait_for, worker_env

OPTIONS = {"bossnet": {"draws": 2, "seed": 1}, "astronn_dist": {"draws": 4, "seed": 1}}
EXCEPTION_BIT = {"bossnet": 1 << 0, "astronn_dist": 1 << 11}


@dataclass
class Trial:
    """What happened to one case on the producer's side, then in the store."""

    task_ids: list[str] = field(default_factory=list)
    refused: str = ""
    notes: list[str] = field(default_factory=list)
    sent: int = 0
    rows: list[dict] = field(default_factory=list)




def _enqueue(case: corpus.Case, sent: corpus.Sent, app, settings) -> Trial:
    from tasks.producer import InputError, submit
    from workers import registry

    trial = Trial()
    if sent.files:
        try:
            sub = submit(sent.files, case.pipeline, options=OPTIONS[case.pipeline], settings=settings)
        except InputError as exc:
            trial.refused = str(exc)
        else:
            trial.task_ids += [i for ids in sub.task_ids.values() for i in ids]
            trial.notes, trial.sent = sub.skipped, sub.n_spectra
    for message in sent.messages:
        options = message.options if not isinstance(message.options, dict) else \
            {**OPTIONS[case.pipeline], **message.options}
        result = app.send_task(registry.get(case.pipeline).task_name, args=[message.refs], kwargs={"options": options},
                               queue=settings.queue_for(case.pipeline), serializer=message.serializer)
        trial.task_ids.append(result.id)
        trial.sent += 1
    return trial


def _check(case: corpus.Case, trial: Trial, log: str) -> list[str]:
    """Every way the case's outcome differs from the one written in the corpus."""
    o, rows, problems = case.outcome, trial.rows, []
    if o.kind == corpus.REFUSED:
        said = trial.refused or " ".join(trial.notes)
        if o.text not in said:
            problems.append(f"not refused with {o.text!r}: {said[:200]!r}")
        if trial.task_ids or rows:
            problems.append(f"sent {len(trial.task_ids)} messages, {len(rows)} rows")
        return problems
    if trial.refused:
        return [f"refused at enqueue: {trial.refused[:200]}"]
    if o.kind == corpus.REJECTED:
        if rows or o.text not in log:
            problems.append(f"{len(rows)} rows; {o.text!r} in the worker log: {o.text in log}")
        return problems
    if len(rows) != o.rows:
        problems.append(f"{len(rows)} rows, expected {o.rows}")
    for row in rows:
        error, flags = row["error"] or "", int(row["result_flags"])
        if o.kind == corpus.OK:
            if error or flags & EXCEPTION_BIT[case.pipeline]:
                problems.append(f"not ok: flags {flags}, error {error[:200]!r}")
            continue
        bit = None if o.flag is None else _bit(case.pipeline, o.flag)
        if bit is not None and not flags & bit:
            problems.append(f"{o.flag} not set (flags {flags}); error {error[:200]!r}")
        if o.text is not None and o.text not in error:
            problems.append(f"error {error[:300]!r} lacks {o.text!r}")
        if o.text is None and o.flag is not None and error:
            problems.append(f"unexpected error {error[:200]!r}")
    if o.kind == corpus.RETRIED and not _retries(log, case.name):
        problems.append("never retried")
    return problems


def _bit(pipeline: str, flag: str) -> int:
    from workers.store import schemas

    return schemas()[pipeline].flag(flag).value


def _retries(log: str, name: str) -> int:
    return sum(1 for line in log.splitlines() if "transient" in line and ", retry " in line and name in line)


@pytest.mark.integration
def test_corpus_through_a_real_worker(tmp_path, monkeypatch, start_worker, clean_redis, postgres_schema_url):
    import redis

    from workers.store import ResultStore

    root, outside = tmp_path / "data", tmp_path / "outside"
    built = corpus.build_all(root, outside)
    catalog = corpus.write_catalog(tmp_path / "catalog.csv")
    env = worker_env(tmp_path, root, postgres_schema_url, clean_redis, SPECQ_CATALOG=catalog, SPECQ_MAX_RETRIES=1,
                     SPECQ_RETRY_BACKOFF=0.1, SPECQ_MAX_MESSAGE_REFS=8)
    app, settings = producer_app(env, monkeypatch)

    # Everything is enqueued before the worker starts, so a file can vanish in between.
    trials = {case.name: _enqueue(case, built[case.name], app, settings) for case in corpus.CASES}
    for sent in built.values():
        if sent.after_enqueue:
            sent.after_enqueue()
    worker = start_worker(env, queues="gpu,cpu")
    store = ResultStore(settings.database)
    broker = redis.Redis.from_url(clean_redis)
    expected = sum(c.outcome.rows for c in corpus.CASES if c.outcome.kind in (corpus.OK, corpus.ROW, corpus.RETRIED))

    def drained():
        idle = not any(broker.llen(q) for q in ("gpu", "cpu")) and not broker.hlen("unacked")
        return idle and store.count() >= expected

    def outcomes():
        log = worker.log_text()
        all_rows = store.rows("bossnet") + store.rows("astronn_dist")
        for case in corpus.CASES:
            trial = trials[case.name]
            trial.rows = [r for r in all_rows
                          if r["task_id"] in trial.task_ids or (r["path"] or "").startswith(case.name + "/")]
        return log, all_rows, {c.name: p for c in corpus.CASES if (p := _check(c, trials[c.name], log))}

    def diagnose():
        _, all_rows, problems = outcomes()
        return (f"{len(all_rows)} rows; queues gpu {broker.llen('gpu')} cpu {broker.llen('cpu')}, "
                f"unacked {broker.hlen('unacked')}; problems {problems}\n{worker.log_text()[-3000:]}")

    wait_for(drained, 180, what=f"{expected} rows and an empty queue", on_fail=diagnose)
    log, all_rows, problems = outcomes()

    refused = sum(1 for c in corpus.CASES if c.outcome.kind == corpus.REFUSED and not trials[c.name].task_ids)
    retried = sum(_retries(log, c.name) for c in corpus.CASES)
    restarts = len(re.findall(r"@\S+ ready\.", log)) - 1
    claimed = sum(len(trials[c.name].rows) for c in corpus.CASES)
    lost = expected - min(expected, claimed)
    inputs = sum(len(s.files) + len(s.messages) for s in built.values())
    say(f"corpus: {len(corpus.CASES)} kinds, {inputs} inputs tried, {len(all_rows)} rows written, "
        f"{refused} refused at enqueue, {retried} retries, {restarts} worker restarts, {lost} lost")
    assert not problems, problems
    assert worker.proc.poll() is None and restarts == 0, "the worker must survive the whole corpus"
    assert len(all_rows) == claimed == expected and lost == 0, "every spectrum sent ends as exactly one row"
    assert refused == sum(c.outcome.kind == corpus.REFUSED for c in corpus.CASES)
    assert retried >= 1 and len(corpus.CASES) >= 35
    # Row identity: names as given under the root, a link by its own name, one row for a file given thrice.
    paths = {r["path"] for r in all_rows}
    assert "symlink_inside_root/spec-link.fits" in paths
    assert "non_ascii_path/spëctra/星/spec-000100-60000-1.fits" in paths
    assert [r["path"] for r in trials["same_file_three_times"].rows] == ["same_file_three_times/spec-000100-60000-1.fits"]


# -- specq run: the same identity, and the error column --------------------------------------
def _specq_run(*args, cwd, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "specq.cli", "run", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)


def test_run_plan_names_rows_by_the_data_root_or_as_given(tmp_path, monkeypatch):
    from specq.cli import run_plan

    root, other = tmp_path / "data", tmp_path / "elsewhere"
    inside = corpus.spec_lite(root / "boss" / "spec-000100-60000-2.fits", seed=2)
    outside_file = corpus.spec_lite(other / "spec-000100-60000-1.fits")
    os.symlink(tmp_path / "not-a-spectrum.txt", root / "spec-link.fits")
    (tmp_path / "not-a-spectrum.txt").write_text("root:x:0:0::/root:/bin/bash\n")
    monkeypatch.chdir(tmp_path)

    def names(files):
        refs, notes = run_plan([str(f) for f in files], ["bossnet"], root)
        return [r.path for r in refs["bossnet"]], notes

    # A file outside the root keeps the name given, whatever else is on the command line.
    assert names([outside_file])[0] == [str(outside_file)]
    assert names([outside_file, inside])[0] == [str(outside_file), "boss/spec-000100-60000-2.fits"]
    assert names(["elsewhere/spec-000100-60000-1.fits"])[0] == ["elsewhere/spec-000100-60000-1.fits"]
    # Under the root: relative to it, however it was given.
    assert names(["data/boss/spec-000100-60000-2.fits"])[0] == ["boss/spec-000100-60000-2.fits"]
    # A symlink is its own name (its target is read and flagged), and the same file thrice is one row.
    assert names([root / "spec-link.fits"])[0] == ["spec-link.fits"]
    paths, notes = names([inside, "data/boss/spec-000100-60000-2.fits", root / "boss" / "." / inside.name])
    assert paths == ["boss/spec-000100-60000-2.fits"] and len(notes) == 2
    # A folder is searched; an empty one, a FIFO or a device is refused with a clear line.
    assert names([root / "boss"])[0] == ["boss/spec-000100-60000-2.fits"]
    from tasks.producer import InputError

    (root / "empty").mkdir()
    os.mkfifo(root / "spec-fifo.fits")
    with pytest.raises(InputError) as refused:
        run_plan([str(root / "empty"), str(root / "spec-fifo.fits"), "/dev/zero"], ["bossnet"], root)
    lines = str(refused.value).splitlines()
    assert len(lines) == 3 and "no spectrum files" in lines[0] and "FIFO" in lines[1] and "device" in lines[2]


def test_specq_run_writes_the_error_column_and_refuses_a_folder_without_spectra(tmp_path):
    from astropy.table import Table

    data = tmp_path / "data"
    corpus.spec_lite(data / "boss" / "spec-000100-60000-1.fits")
    (data / "boss" / "spec-000100-60000-2.fits").write_text("not FITS")
    os.symlink(tmp_path / "secret.txt", data / "spec-link.fits")
    (tmp_path / "secret.txt").write_text("root:x:0:0::/root:/bin/bash\n")
    for suffix in ("fits",):  # the strictest of the three formats for a text column; one model load
        out = _specq_run("--draws", 2, "--seed", 1, "--quiet", "-o", tmp_path / f"out.{suffix}", "boss",
                         "spec-link.fits", "boss/spec-000100-60000-1.fits", cwd=data,
                         env_extra={"SPECQ_DATA_ROOT": str(data)})
        assert out.returncode == 0, out.stderr[-3000:]
        table = Table.read(tmp_path / f"out.{suffix}")
        errors = {str(p): ("" if e is None or str(e) in ("", "--") else str(e))
                  for p, e in zip(table["path"], table["error"])}
        assert set(errors) == {"boss/spec-000100-60000-1.fits", "boss/spec-000100-60000-2.fits", "spec-link.fits"}
        assert errors["boss/spec-000100-60000-1.fits"] == ""
        assert "not a FITS file" in errors["boss/spec-000100-60000-2.fits"]
        assert "not a FITS file" in errors["spec-link.fits"]
    (data / "empty").mkdir()
    out = _specq_run("-o", tmp_path / "x.csv", "empty", cwd=data)
    assert out.returncode == 2 and "empty: a folder with no spectrum files" in out.stderr


def test_a_huge_file_is_refused_with_bounded_memory(tmp_path):
    """A COADD claiming 40 million rows (1.4 GB, sparse) is refused before a pixel is read."""
    path = corpus._huge_spec_lite(tmp_path / "spec-000100-60000-1.fits")
    assert path.stat().st_size > 1 << 30 and path.stat().st_blocks * 512 < 1 << 20  # sparse: no disk used
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest) across exec.
    probe = ("import sys\n"
             "from workers.readers import read_spectrum\n"
             "from workers.spectrum import SpectrumError\n"
             "try:\n"
             "    read_spectrum(sys.argv[1], 1, 0)\n"
             "except SpectrumError as exc:\n"
             "    print(exc)\n"
             "status = open('/proc/self/status').read()\n"
             "print(int(status.split('VmHWM:')[1].split()[0]) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    message, peak_mb = out.stdout.strip().splitlines()
    assert "40000000 rows (pixels); a spectrum has at most 100000" in message
    assert int(peak_mb) < 400, f"peak memory {peak_mb} MB reading a refused file"


def test_a_local_reference_never_travels():
    from workers.refs import RefError, SpectrumRef

    ref = SpectrumRef("/a/other/spec-1.fits", 1, 0, local_file="/a/other/spec-1.fits")
    assert ref.key == "/a/other/spec-1.fits:1:0"
    with pytest.raises(RefError, match="cannot be sent"):
        ref.to_json()
    with pytest.raises(RefError):
        SpectrumRef.from_json({"path": "x.fits", "local_file": "/etc/passwd"})
