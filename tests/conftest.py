"""Shared fixtures: isolated settings, real Redis/PostgreSQL, real Celery worker processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# What the crash and recovery tests measured (counts, seconds): said at the end of the run,
# whichever process ran the test (pytest-xdist's workers keep their own stdout).
_SAID: list[str] = []
# With several test processes (pytest-xdist, `make test`), the tests that share a service's
# state run one after another in one process: those that use the tests' Redis database
# (each flushes it) or PostgreSQL's public schema, and those marked integration without a
# fixture that gives them services of their own. Tests whose services are their own (a
# PostgreSQL schema, a RabbitMQ virtual host, a redis-server of their own, workers on the
# test's own broker and store) are shared out like the others, the heavier first.
_SHARED_FIXTURES = {"redis_url", "clean_redis"}
_OWN_SERVICE_FIXTURES = {"postgres_schema_url", "rabbitmq_url", "start_worker", "redis_server"}
# Where the test processes leave the shared tests' ids for the scheduler (it sees only ids).
_GROUPS_DIR = "PYTEST_SPECQ_GROUPS_DIR"


def say(line: str) -> None:
    """Report ``line`` in the run's summary ("measured by the tests"), beside pytest's own."""
    _SAID.append(line.rstrip())


def _shares_services(item) -> bool:
    names = set(item.fixturenames)
    # postgres_url alone is the database's public schema (a schema of the test's own needs it too).
    public_schema = "postgres_url" in names and "postgres_schema_url" not in names
    return (bool(_SHARED_FIXTURES & names) or public_schema or item.get_closest_marker("shared_redis") is not None
            or (item.get_closest_marker("integration") is not None and not _OWN_SERVICE_FIXTURES & names))


# A parameter of a test that asks for ``clean_redis`` only for that parameter
# (``request.getfixturevalue``): the mark puts it with the tests that share the database.
SHARED_REDIS = pytest.param("redis", marks=pytest.mark.shared_redis)


def _run_order(item) -> int:
    """0: the shared tests (one unit of work, the longest); 1: tests with services of their own; 2: the rest."""
    if _shares_services(item):
        return 0
    return 1 if _OWN_SERVICE_FIXTURES & set(item.fixturenames) else 2


def pytest_configure(config):
    if not hasattr(config, "workerinput") and getattr(config.option, "numprocesses", None):
        import tempfile

        os.environ[_GROUPS_DIR] = tempfile.mkdtemp(prefix="specq-test-groups-")  # the processes inherit it


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput") and os.environ.get(_GROUPS_DIR):
        import shutil

        shutil.rmtree(os.environ.pop(_GROUPS_DIR), ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):
        return
    # A test process: the shared tests first (the longest unit of work starts first), and
    # their ids where the scheduler finds them. Every process collects the same list.
    items.sort(key=_run_order)
    if config.workerinput["workerid"] == "gw0":  # the scheduler reads it once every process has collected
        (Path(os.environ[_GROUPS_DIR]) / "shared.txt").write_text(
            "\n".join(item.nodeid for item in items if _shares_services(item)))


def pytest_xdist_make_scheduler(config, log):
    """The tests that share a service's state as one unit of work; every other test a unit of its own."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedTogether(LoadScopeScheduling):
        shared: set[str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.shared is None:  # first called once every process has collected
                self.shared = set((Path(os.environ[_GROUPS_DIR]) / "shared.txt").read_text().splitlines())
            return "shared services" if nodeid in self.shared else nodeid

    return SharedTogether(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if _SAID:
        outcome.get_result().user_properties.extend(("said", line) for line in _SAID)
        _SAID.clear()


def pytest_terminal_summary(terminalreporter):
    lines = [value for reports in terminalreporter.stats.values() for report in reports
             for key, value in getattr(report, "user_properties", ()) if key == "said"]
    if lines:
        terminalreporter.section("measured by the tests")
        for line in lines:
            terminalreporter.line(line)


# Property-based tests run a fixed, repeatable budget in CI: the same examples every run
# (derandomized, no example database), each allowed seconds, not milliseconds, on a
# loaded 2-core runner. HYPOTHESIS_PROFILE=thorough searches longer and at random.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, max_examples=150,
                                     deadline=5000, print_blob=True)
hypothesis_settings.register_profile("thorough", max_examples=5000, deadline=None, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
REDIS_URL = os.environ.get("SPECQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("SPECQ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RABBITMQ_HOST = os.environ.get("SPECQ_TEST_RABBITMQ_HOST", "127.0.0.1:5672")
# Read at import: the tests' own environment drops every SPECQ_* variable (isolated_env).
REQUIRE_RABBITMQ = bool(os.environ.get("SPECQ_TEST_REQUIRE_RABBITMQ"))


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """No test sees the user's SPECQ_*/CELERY_* settings; demo weights, asked for, are cached per session."""
    for key in list(os.environ):
        if key.startswith("SPECQ_") or key == "CELERY_BROKER_URL":
            monkeypatch.delenv(key)
    weights = tmp_path_factory.getbasetemp() / "weights-cache"
    monkeypatch.setenv("SPECQ_WEIGHTS_DIR", str(weights))
    # The published weights are not available to the tests: they ask for demo weights.
    monkeypatch.setenv("SPECQ_DEMO_WEIGHTS", "1")
    monkeypatch.setenv("SPECQ_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(autouse=True)
def _no_kept_file_structures():
    """Each test reads its files as if for the first time: a reading thread keeps the
    structures of the files it read last, and a test that breaks the header walk
    (``scan_headers``) would not reach it for a file an earlier test read."""
    from workers.readers import native

    native._STRUCTURES.__dict__.clear()


@pytest.fixture(scope="session")
def redis_url():
    """The real Redis on this machine (CI starts it); a clear failure when it is absent."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis is needed at {REDIS_URL} ({exc}); `.ci/run` starts it")
    return REDIS_URL


@pytest.fixture
def clean_redis(redis_url, request):
    import redis

    if not _shares_services(request.node):
        pytest.fail("this test uses the tests' Redis database without saying so: it would run beside the "
                    "others that flush it; ask for clean_redis as an argument, or give the parameter the "
                    "shared_redis mark (conftest.SHARED_REDIS)")

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield redis_url
    client.flushdb()


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)


def _rabbitmq_missing() -> str | None:
    """Why the RabbitMQ tests cannot run here, or None."""
    import shutil
    import socket

    host, port = RABBITMQ_HOST.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as exc:
        return f"no RabbitMQ at {RABBITMQ_HOST} ({exc})"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not on PATH (it makes each test's virtual host)"
    return None


def _new_virtual_host() -> tuple[str, str]:
    """A new, empty virtual host where guest may do anything; (its name, rabbitmqctl's error or "")."""
    vhost = f"specq-test-{uuid.uuid4().hex[:10]}"
    for args in (("add_vhost", vhost), ("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")):
        done = _rabbitmqctl(*args)
        if done.returncode != 0:
            return vhost, done.stderr or done.stdout
    return vhost, ""


@pytest.fixture(scope="session")
def _virtual_hosts():
    """Makes each test's RabbitMQ virtual host while the test before it runs, and deletes it after.

    rabbitmqctl starts an Erlang node for each call (seconds): the next test's virtual host is
    made, and the last one deleted, in the background. Every test still gets a new, empty one.
    """
    from concurrent.futures import ThreadPoolExecutor

    calls = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rabbitmqctl")
    ahead = []  # the virtual host being made for the next test

    def take() -> tuple[str, str]:
        made = ahead.pop() if ahead else calls.submit(_new_virtual_host)
        ahead.append(calls.submit(_new_virtual_host))
        return made.result()

    def delete(vhost: str) -> None:
        calls.submit(_rabbitmqctl, "delete_vhost", vhost)

    yield take, delete
    for made in ahead:
        delete(made.result()[0])
    calls.shutdown(wait=True)


@pytest.fixture
def rabbitmq_url(request):
    """A RabbitMQ virtual host of this test's own (guest/guest), deleted after the test.

    Without RabbitMQ the test says so and is skipped; CI (``SPECQ_TEST_REQUIRE_RABBITMQ=1``,
    set by ``make test``) fails it instead.
    """
    missing = _rabbitmq_missing()
    if missing:
        (pytest.fail if REQUIRE_RABBITMQ else pytest.skip)(f"{missing}: the RabbitMQ tests need it")
    take, delete = request.getfixturevalue("_virtual_hosts")
    vhost, error = take()
    try:
        assert not error, error
        yield f"amqp://guest:guest@{RABBITMQ_HOST}/{vhost}"
    finally:
        delete(vhost)


@pytest.fixture(scope="session")
def postgres_url():
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is needed at {POSTGRES_URL} ({exc}); `.ci/run` starts it")
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture
def postgres_schema_url(postgres_url):
    """A fresh PostgreSQL schema per test (search_path), dropped afterwards."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"create schema {name}"))
    sep = "&" if "?" in postgres_url else "?"
    yield f"{postgres_url}{sep}options=-csearch_path%3D{name}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema {name} cascade"))
    engine.dispose()


class WorkerProcess:
    """A real ``celery -A tasks worker`` subprocess with its own environment (``wrap``: a command it runs under)."""

    def __init__(self, env: dict, queues: str, log_path: Path, pool: str = "solo", concurrency: int | None = 1,
                 name: str | None = None, wrap: tuple[str, ...] = ()):
        self.log_path = log_path
        cmd = [*wrap, sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", queues, "-P", pool,
               *(["-c", str(concurrency)] if concurrency else []), "-l", "INFO",
               "-n", f"{name or 'w' + uuid.uuid4().hex[:6]}@%h", "--without-mingle", "--without-gossip"]
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def stop(self, sig=signal.SIGTERM, timeout: float = 30):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self.log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_worker(tmp_path):
    """Factory: start workers; all are stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def start(env: dict, queues: str = "gpu,cpu", **kw) -> WorkerProcess:
        w = WorkerProcess(env, queues, tmp_path / f"worker{len(started)}.log", **kw)
        started.append(w)
        return w

    yield start
    # Nothing is asserted after the test: a worker still running is killed, not shut down warm
    # (which waits seconds for its pool, heartbeat and connections to close).
    for w in started:
        w.stop(signal.SIGKILL)


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition", on_fail=None):
    """Poll ``predicate`` until true; fail with ``what`` (and extra diagnostics) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    extra = on_fail() if on_fail else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{extra}")


def worker_env(tmp_path: Path, data_root: Path, database_url: str, broker_url: str | None = None,
               **extra) -> dict:
    """Environment for a worker/producer pair of a test (its data root made: a worker waits for a missing one)."""
    Path(data_root).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECQ_") and k != "CELERY_BROKER_URL"}
    env.update({
        "SPECQ_STATE_DIR": str(tmp_path / "state"),
        "SPECQ_DATA_ROOT": str(data_root),
        "SPECQ_DATABASE_URL": database_url,
        "SPECQ_WEIGHTS_DIR": os.environ["SPECQ_WEIGHTS_DIR"],
        "SPECQ_DEMO_WEIGHTS": "1",  # no published weights here: the workers ask for demo weights
        "PYTHONPATH": str(ROOT),
    })
    if broker_url:
        env["SPECQ_BROKER_URL"] = broker_url
    env.update({k: str(v) for k, v in extra.items()})
    return env


def bossnet_vector_spectra(cases) -> list:
    """The BOSS spectra of the preprocessing vectors (``bossnet_preprocess.npz``), one per case."""
    import numpy as np

    from workers.spectrum import Spectrum

    with np.load(Path(__file__).parent / "data" / "bossnet_preprocess.npz") as npz:
        return [Spectrum(path=f"boss/{c}.fits", hdu=1, row=0, instrument="boss",
                         wavelength=10.0 ** npz[f"{c}/loglam"], flux=npz[f"{c}/flux"], ivar=npz[f"{c}/ivar"])
                for c in cases]


class RecordingApp:
    """Stands for the Celery app in a producer's call: records each message's task name and
    references (``sent``) instead of sending it, for tests of what is sent, and to where."""

    def __init__(self, settings):
        self.specq_settings = settings
        self.sent: list[tuple[str, list[dict]]] = []

    def send_task(self, name, args, **kwargs):
        self.sent.append((name, args[0]))
        return type("Result", (), {"id": f"t{len(self.sent)}"})()


def producer_app(env: dict, monkeypatch):
    """Configure this process's Celery app like a test's worker (the same SPECQ_* settings)."""
    for key in list(os.environ):
        if key.startswith("SPECQ_"):
            monkeypatch.delenv(key)
    for k, v in env.items():
        if k.startswith("SPECQ_"):
            monkeypatch.setenv(k, v)
    from tasks.app import app, configure
    from workers.settings import load_settings

    settings = load_settings()
    configure(app, settings)
    return app, settings
