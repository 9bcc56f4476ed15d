"""Slurm deployment: the sbatch script's directives, and its signal handling run against fake srun/scancel/specq."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from deployment import SBATCH, option_value, pool_of, queue_of


# -- Slurm ---------------------------------------------------------------------------------
def sbatch_options(text: str) -> list[str]:
    return [line.split(None, 1)[1].strip() for line in text.splitlines() if line.startswith("#SBATCH ")]


def test_sbatch_directives_and_command():
    text = SBATCH.read_text()
    assert text.startswith("#!/bin/bash\n")
    opts = sbatch_options(text)
    assert "--gpus-per-task=1" in opts
    signal_opt = next(o for o in opts if o.startswith("--signal="))
    assert re.fullmatch(r"--signal=(B:)?(TERM|15)@\d+", signal_opt), signal_opt
    assert any(o.startswith("--time=") for o in opts)
    # #SBATCH lines are only read before the first command.
    first_cmd = next(i for i, line in enumerate(text.splitlines())
                     if line.strip() and not line.startswith("#"))
    last_sbatch = max(i for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH"))
    assert last_sbatch < first_cmd
    workers = [shlex.split(line) for line in text.splitlines()
               if re.search(r"\bspecq worker\b", line) and "--help" not in line
               and not line.lstrip().startswith(("#", "echo"))]
    assert workers, "no `specq worker` command"
    for argv in workers:
        assert queue_of(argv) == "gpu" and pool_of(argv) == "solo", argv
    assert re.search(r"^\s*srun\b", text, re.M)
    assert re.search(r"^\s*trap\s+\S+\s+TERM\b", text, re.M)


FAKE_SRUN = """\
#!{python}
# Fake srun: runs the step's command once per task, locally, like one node would.
import os, subprocess, sys
args = sys.argv[1:]
out = next(a.split("=", 1)[1] for a in args if a.startswith("--output="))
cmd = [a for a in args if not a.startswith("--")]
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write("srun " + " ".join(args) + "\\n")
procs = []
for i in range(int(os.environ["FAKE_NTASKS"])):
    log = out.replace("%j", os.environ["SLURM_JOB_ID"]).replace("%N", "node1").replace("%t", str(i))
    env = dict(os.environ, SLURM_LOCALID=str(i), SLURM_PROCID=str(i))
    p = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    with open(os.environ["FAKE_PIDS"], "a") as fh:
        fh.write(f"{{p.pid}}\\n")
    procs.append(p)
sys.exit(max(p.wait() for p in procs))
"""

FAKE_SCANCEL = """\
#!{python}
import os, signal, sys
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write("scancel " + " ".join(sys.argv[1:]) + "\\n")
sig = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--signal="))
for pid in open(os.environ["FAKE_PIDS"]).read().split():
    try:
        os.kill(int(pid), getattr(signal, "SIG" + sig))
    except ProcessLookupError:
        pass
"""

FAKE_SPECQ = """\
#!{python}
# Fake specq: records how it was started; SIGTERM = warm shutdown, exit 0.
import json, os, signal, sys, time
if sys.argv[1:3] == ["worker", "--help"]:
    print("  -n, --hostname TEXT")
    sys.exit(0)
rank = os.environ["SLURM_LOCALID"]
out = os.environ["FAKE_OUT"]
def warm(signum, frame):
    open(os.path.join(out, "term-" + rank), "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, warm)
keys = ("CUDA_VISIBLE_DEVICES", "SPECQ_DEVICE", "SPECQ_BROKER_URL")
with open(os.path.join(out, "started-" + rank + ".json"), "w") as fh:
    json.dump({{"argv": sys.argv[1:], **{{k: os.environ.get(k) for k in keys}}}}, fh)
time.sleep(30)
sys.exit(3)
"""


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, src in (("srun", FAKE_SRUN), ("scancel", FAKE_SCANCEL), ("specq", FAKE_SPECQ)):
        p = bin_dir / name
        p.write_text(src.format(python=sys.executable))
        p.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    env_file = tmp_path / "specq.env"
    env_file.write_text("SPECQ_BROKER_URL=redis://localhost:1/0\nSPECQ_DATA_ROOT=/srv/spectra\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SPECQ_", "SLURM_", "CUDA_VISIBLE"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        SLURM_JOB_ID="4242",
        SLURM_SUBMIT_DIR=str(tmp_path),
        SLURM_CPUS_PER_TASK="2",
        SPECQ_ENV_FILE=str(env_file),
        FAKE_NTASKS="2",
        FAKE_OUT=str(out),
        FAKE_LOG=str(tmp_path / "calls.log"),
        FAKE_PIDS=str(tmp_path / "pids"),
    )
    yield tmp_path, env
    pids = tmp_path / "pids"
    if pids.exists():
        for pid in pids.read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_sbatch_forwards_sigterm_for_warm_shutdown(fake_slurm):
    tmp, env = fake_slurm
    out = tmp / "out"
    job_out = tmp / "job.out"
    # A file, not a pipe: orphaned workers holding a pipe open would stall the test.
    with open(job_out, "w") as fh:
        proc = subprocess.Popen(["bash", str(SBATCH)], env=env, cwd=tmp,
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while len(list(out.glob("started-*.json"))) < 2:
            assert proc.poll() is None, job_out.read_text()
            assert time.monotonic() < deadline, "workers never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 delivers
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = job_out.read_text()
    assert proc.returncode == 0, output
    assert "warm shutdown" in output
    calls = (tmp / "calls.log").read_text()
    assert "scancel --signal=TERM 4242" in calls
    assert "--gpus-per-task=1" in calls and "--cpus-per-task=2" in calls
    for rank in ("0", "1"):
        assert (out / f"term-{rank}").exists(), f"worker {rank} never got SIGTERM"
        started = json.loads((out / f"started-{rank}.json").read_text())
        argv = started["argv"]
        assert argv[0] == "worker" and queue_of(argv) == "gpu" and pool_of(argv) == "solo"
        assert option_value(argv, "--hostname") == f"gpu{rank}-4242@%h"
        # No CUDA_VISIBLE_DEVICES from Slurm here: the local rank picks the GPU.
        assert started["CUDA_VISIBLE_DEVICES"] == rank
        assert started["SPECQ_DEVICE"] == "cuda"
        assert started["SPECQ_BROKER_URL"] == "redis://localhost:1/0"  # from SPECQ_ENV_FILE
        log = tmp / "logs" / f"specq-gpu-4242-node1-{rank}.log"
        assert f"GPU {rank}: specq worker --queues gpu" in log.read_text()


def test_sbatch_keeps_slurm_gpu_binding(fake_slurm):
    tmp, env = fake_slurm
    env.update(CUDA_VISIBLE_DEVICES="3", FAKE_NTASKS="1")
    proc = subprocess.Popen(["bash", str(SBATCH)], env=env, cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (tmp / "out" / "started-0.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads((tmp / "out" / "started-0.json").read_text())["CUDA_VISIBLE_DEVICES"] == "3"


def test_sbatch_refuses_to_start_without_broker(fake_slurm):
    tmp, env = fake_slurm
    env.pop("SPECQ_ENV_FILE")
    res = subprocess.run(["bash", str(SBATCH)], env=env, cwd=tmp,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert "SPECQ_BROKER_URL" in res.stderr
    assert not (tmp / "calls.log").exists(), "srun ran without a broker"
