"""Every user mistake: one clear line on stderr, no traceback, exit status 2.

Each case runs the real command line in a subprocess. ``specq status`` is not a usage
error: it prints its report and exits 1 when the broker or the database does not answer.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from proxy import free_port


def _specq(*args, cwd, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **{k: str(v) for k, v in env.items()}}
    return subprocess.run([sys.executable, "-m", "specq.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def _side_by_side(commands: list[list[str]], cwd) -> list[subprocess.CompletedProcess]:
    """Independent commands started at once (each mostly waits on its imports): their outcomes, in order."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(command, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for command in commands]
    done = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return done


def _one_line_error(out: subprocess.CompletedProcess, *expected: str, prefix: str | None = None) -> str:
    """The one line of a refused command (``specq …: error: …``, or starting with ``prefix``)."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    form = lines[0].startswith(prefix) if prefix else lines[0].startswith("specq") and "error: " in lines[0]
    assert form and all(text in lines[0] for text in expected), lines[0]
    return lines[0]


@pytest.fixture
def spectrum(tmp_path):
    from specq.testing.synthetic import write_spec_lite

    path = tmp_path / "spec-a.fits"
    write_spec_lite(path, teff=5000, logg=4.0, fe_h=0.0, v_r=0.0, snr=30, seed=1)
    return path.name


def _cuda_mistake() -> tuple[str, str]:
    """A CUDA device this machine does not have, and the words of its error."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.device_count()}", "CUDA device(s)"
    return "cuda", "CUDA"


RUN_MISTAKES = {
    "unknown pipeline": (["--pipeline", "boss"], ["--pipeline boss", "unknown pipeline", "bossnet"]),
    "missing weights": (["--weights", "/nope"], ["--weights /nope: no such file"]),
    "missing catalog": (["--pipeline", "astronn_dist", "--catalog", "missing.csv"], ["--catalog missing.csv"]),
    "missing list": (["--from-list", "nolist.txt"], ["--from-list nolist.txt"]),
    "negative draws": (["--draws", "-3"], ["--draws", "0 or more"]),
    "draws not a number": (["--draws", "many"], ["--draws", "not a whole number"]),
    "batch size 0": (["--batch-size", "0"], ["--batch-size", "at least 1"]),
    "not a device": (["--device", "cudx"], ["--device cudx: not a device"]),
    "unknown output format": (["-o", "out.txt"], ["out.txt", "unknown output format"]),
}


@pytest.mark.parametrize("case", list(RUN_MISTAKES))
def test_specq_run_mistakes(tmp_path, spectrum, case):
    options, expected = RUN_MISTAKES[case]
    output = [] if "-o" in options else ["-o", "out.csv"]
    _one_line_error(_specq("run", *options, *output, spectrum, cwd=tmp_path), *expected)
    assert not (tmp_path / "out.csv").exists()


def test_specq_run_of_several_pipelines_into_one_file_name(tmp_path, spectrum):
    """As --help says: several pipelines write one file each, named with {pipeline}."""
    assert "put {pipeline} in the --output name" in " ".join(_specq("run", "--help", cwd=tmp_path).stdout.split())
    out = _specq("run", "--demo-weights", "--pipeline", "bossnet,astronn_dist", "-o", "out.csv", spectrum, cwd=tmp_path)
    _one_line_error(out, "would all go to out.csv", "-o 'out-{pipeline}.csv'", prefix="specq run:")
    assert not list(tmp_path.glob("out*.csv"))


def test_specq_run_on_a_cuda_device_this_machine_lacks(tmp_path, spectrum):
    device, words = _cuda_mistake()
    _one_line_error(_specq("run", "--device", device, "-o", "out.csv", spectrum, cwd=tmp_path),
                    f"--device {device}", words)


def test_specq_run_device_from_the_environment(tmp_path, spectrum):
    _one_line_error(_specq("run", "-o", "out.csv", spectrum, cwd=tmp_path, SPECQ_DEVICE="gpu"), "SPECQ_DEVICE gpu")


def test_specq_run_missing_input_unreadable_weights_and_catalog(tmp_path, spectrum):
    from specq.testing.synthetic import write_apstar

    (tmp_path / "broken.pt").write_bytes(b"not a torch file at all" * 10)
    write_apstar(tmp_path / "apStar-a.fits", teff=4800, logg=2.5, fe_h=0.0, fakemag=300.0, snr=100, seed=2)
    (tmp_path / "broken.csv").write_bytes(bytes(range(256)) * 4)
    specq = [sys.executable, "-m", "specq.cli", "run"]
    missing, weights, catalog = _side_by_side([
        [*specq, "-o", "out.csv", "missing.fits"],
        [*specq, "--weights", "broken.pt", "-o", "out.csv", spectrum],
        [*specq, "--pipeline", "astronn_dist", "--catalog", "broken.csv", "-o", "out.csv", "apStar-a.fits"]],
        cwd=tmp_path)
    _one_line_error(missing, "missing.fits: no such file", prefix="specq run: ")
    _one_line_error(weights, "bossnet: ", "broken.pt")
    _one_line_error(catalog, "broken.csv: not a catalog file")


def test_specq_enqueue_with_the_broker_down(tmp_path, spectrum):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    line = _one_line_error(_specq("enqueue", spectrum, cwd=tmp_path, SPECQ_BROKER_URL=url, SPECQ_DATA_ROOT=tmp_path),
                           "cannot reach the broker", url)
    assert "SPECQ_BROKER_URL" in line
    assert "stays listed as sent and not finished (specq status), and those after it were not sent: enqueue it all" in line


def test_specq_enqueue_mistakes(tmp_path, spectrum):
    _one_line_error(_specq("enqueue", "missing.fits", cwd=tmp_path, SPECQ_DATA_ROOT=tmp_path), "missing.fits")
    _one_line_error(_specq("enqueue", "--chunk-size", "0", spectrum, cwd=tmp_path), "--chunk-size", "at least 1")
    _one_line_error(_specq("enqueue", "--pipeline", "boss", spectrum, cwd=tmp_path), "unknown pipeline")
    _one_line_error(_specq("enqueue", "--from-list", "nolist.txt", cwd=tmp_path), "--from-list nolist.txt")


def test_results_export_from_a_database_that_does_not_exist(tmp_path, postgres_url):
    wrong = postgres_url.rsplit("/", 1)[0] + "/no_such_specq_db"
    _one_line_error(_specq("results", "export", "-o", "x.csv", cwd=tmp_path, SPECQ_DATABASE_URL=wrong),
                    "cannot open the result database", "no_such_specq_db")
    missing = tmp_path / "nowhere" / "r.sqlite"
    _one_line_error(_specq("results", "export", "-o", "x.csv", cwd=tmp_path, SPECQ_DATABASE_URL=f"sqlite:///{missing}"),
                    f"no result database at {missing}")
    assert not missing.parent.exists()  # looking did not create it
    _one_line_error(_specq("results", "export", "-o", "x.csv", cwd=tmp_path, SPECQ_DATABASE_URL="nosuch://db"),
                    "SPECQ_DATABASE_URL nosuch://db")


def test_results_export_to_an_unknown_format(tmp_path):
    from workers.store import ResultStore

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    ResultStore(url).create()
    _one_line_error(_specq("results", "export", "-o", "z.txt", cwd=tmp_path, SPECQ_DATABASE_URL=url),
                    "unknown output format '.txt'")
    assert not list(tmp_path.glob("z*"))
    out = _specq("results", "export", "--pipeline", "bossnet", "-o", "z.csv", cwd=tmp_path, SPECQ_DATABASE_URL=url)
    assert out.returncode == 0 and (tmp_path / "z.csv").exists(), out.stderr[-2000:]


def test_watch_a_folder_that_does_not_exist(tmp_path):
    _one_line_error(_specq("watch", "nowhere", "--max-seconds", "1", cwd=tmp_path, SPECQ_DATA_ROOT=tmp_path),
                    "nowhere")


def test_status_exits_non_zero_when_the_broker_or_the_database_does_not_answer(tmp_path, redis_url, postgres_url):
    down = f"redis://127.0.0.1:{free_port()}/0"
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    broker_down = _specq("status", cwd=tmp_path, SPECQ_BROKER_URL=down, SPECQ_DATABASE_URL=url)
    assert broker_down.returncode == 1 and "queues error" in broker_down.stdout, broker_down.stdout
    wrong_db = postgres_url.rsplit("/", 1)[0] + "/no_such_specq_db"
    db_down = _specq("status", cwd=tmp_path, SPECQ_BROKER_URL=redis_url, SPECQ_DATABASE_URL=wrong_db)
    assert db_down.returncode == 1 and "store error" in db_down.stdout, db_down.stdout
    healthy = _specq("status", cwd=tmp_path, SPECQ_BROKER_URL=redis_url, SPECQ_DATABASE_URL=url)
    assert healthy.returncode == 0 and "error" not in healthy.stdout, healthy.stdout


SETTING_MISTAKES = {
    "chunk size not a number": ({"SPECQ_CHUNK_SIZE": "lots"}, ["SPECQ_CHUNK_SIZE must be a whole number", "'lots'"]),
    "visibility timeout not a number": ({"SPECQ_VISIBILITY_TIMEOUT": "1h"},
                                        ["SPECQ_VISIBILITY_TIMEOUT must be a whole number", "'1h'"]),
    "metrics port not a number": ({"SPECQ_METRICS_PORT": "http"}, ["SPECQ_METRICS_PORT must be a whole number"]),
    "unknown broker scheme": ({"SPECQ_BROKER_URL": "htp://127.0.0.1:6379/0"},
                              ["SPECQ_BROKER_URL", "unknown broker scheme 'htp'", "redis://"]),
    "database without a driver": ({"SPECQ_DATABASE_URL": "mysql://u@127.0.0.1/db"},
                                  ["SPECQ_DATABASE_URL mysql://u@127.0.0.1/db", "cannot use this database"]),
}


@pytest.mark.parametrize("case", list(SETTING_MISTAKES))
@pytest.mark.parametrize("command", [["status"], ["enqueue", "SPECTRUM"], ["reconcile", "--dry-run"]])
def test_setting_mistakes_in_every_command(tmp_path, spectrum, case, command):
    env, expected = SETTING_MISTAKES[case]
    args = [spectrum if a == "SPECTRUM" else a for a in command]
    _one_line_error(_specq(*args, cwd=tmp_path, SPECQ_DATA_ROOT=tmp_path, **env), *expected)


def test_a_config_file_that_cannot_be_read_or_is_not_toml_is_one_line(tmp_path):
    (tmp_path / "broken.toml").write_text("[specq\n")
    (tmp_path / "flat.toml").write_text("specq = 3\n")
    (tmp_path / "latin1.toml").write_bytes("[specq]\n# café\n".encode("latin-1"))
    status = [sys.executable, "-m", "specq.cli", "status"]
    missing, broken, flat, latin1 = _side_by_side(
        [["env", f"SPECQ_CONFIG={name}", *status] for name in ("nosuch.toml", "broken.toml", "flat.toml", "latin1.toml")],
        tmp_path)
    _one_line_error(latin1, "latin1.toml (SPECQ_CONFIG): not valid TOML")
    _one_line_error(missing, "nosuch.toml (SPECQ_CONFIG): cannot be read: No such file")
    _one_line_error(broken, "broken.toml (SPECQ_CONFIG): not valid TOML", "line 1")
    _one_line_error(flat, "flat.toml (SPECQ_CONFIG): 'specq' must be a table ([specq])")


def test_specq_run_refuses_a_setting_mistake_before_work(tmp_path, spectrum):
    _one_line_error(_specq("run", "-o", "out.csv", spectrum, cwd=tmp_path, SPECQ_CHUNK_SIZE="x"),
                    "SPECQ_CHUNK_SIZE must be a whole number")


def test_plot_input_that_does_not_exist(tmp_path):
    _one_line_error(_specq("results", "plot", "--input", "missing.fits", cwd=tmp_path), "--input missing.fits",
                    "no such file")
    (tmp_path / "junk.fits").write_bytes(b"not FITS" * 400)
    _one_line_error(_specq("results", "plot", "--input", "junk.fits", cwd=tmp_path), "--input junk.fits")


def test_reconcile_duration_mistake(tmp_path):
    _one_line_error(_specq("reconcile", "--older-than", "soon", cwd=tmp_path), "--older-than", "not a duration")


def _as_ordinary_user(*command: str) -> list[str]:
    """``command`` without root's power to read and write whatever the modes forbid.

    The tests run as root; root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH meets file
    modes as an ordinary user does (an ordinary uid could not run this interpreter, which lives
    under /root).
    """
    import shutil

    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to run a command as an ordinary user")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]


def test_specq_run_checks_its_output_can_be_written_before_any_work(tmp_path, spectrum):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    full_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(_as_ordinary_user(sys.executable, "-m", "specq.cli", "run", "-o", str(locked / "out.csv"),
                                           spectrum),
                         cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=300)
    line = _one_line_error(out, f"--output {locked / 'out.csv'}", "cannot write in", "Permission denied")
    assert "DEMO" not in out.stderr, "refused before any model was loaded"
    _one_line_error(_specq("run", "-o", str(tmp_path / "nowhere" / "out.csv"), spectrum, cwd=tmp_path),
                    "no folder", "nowhere")
    assert line


def test_specq_run_never_writes_its_results_over_an_input_or_into_a_folder(tmp_path, spectrum):
    """Refused before any work: an output that is an input file (by its name, another path or
    a link) would destroy the spectra; a folder cannot take the file."""
    (tmp_path / "link.fits").symlink_to(spectrum)
    (tmp_path / "results.fits").mkdir()
    before = (tmp_path / spectrum).read_bytes()
    run = [sys.executable, "-m", "specq.cli", "run", "--demo-weights", "--pipeline", "bossnet", "-o"]
    same, linked, folder = _side_by_side([[*run, spectrum, spectrum], [*run, "link.fits", f"./{spectrum}"],
                                          [*run, "results.fits", spectrum]], tmp_path)
    for out, given in ((same, spectrum), (linked, "link.fits")):
        _one_line_error(out, f"--output {given}: that is the input file {tmp_path / spectrum}", "overwrite")
    _one_line_error(folder, "--output results.fits: a folder")
    assert (tmp_path / spectrum).read_bytes() == before


def test_specq_run_refuses_a_file_name_that_is_not_utf8(tmp_path, spectrum):
    """Linux allows such names; no result file or store can hold one: the run says which to rename."""
    name = os.fsdecode(b"spec-\xff.fits")
    (tmp_path / name).write_bytes((tmp_path / spectrum).read_bytes())
    _one_line_error(_specq("run", "-o", "out.csv", spectrum, name, cwd=tmp_path),
                    "spec-\\xff.fits: the name is not UTF-8 text; rename the file", prefix="specq run:")
    assert not (tmp_path / "out.csv").exists()


def test_specq_run_on_files_that_cannot_be_opened_flags_each_with_its_reason(tmp_path, spectrum):
    """An unreadable file (mode 000, as an ordinary user), a broken link and a folder named
    like a spectrum: each a flagged row naming the reason and the path; nothing vanishes."""
    from astropy.table import Table

    data = tmp_path / "data"
    data.mkdir()
    os.replace(tmp_path / spectrum, data / "spec-1-60000-1.fits")
    (data / "spec-2-60000-2.fits").write_bytes((data / "spec-1-60000-1.fits").read_bytes())
    (data / "spec-2-60000-2.fits").chmod(0)
    (data / "spec-3-60000-3.fits").symlink_to(data / "gone.fits")
    (data / "spec-4-60000-4.fits").mkdir()
    runs = {"folder": [str(data)], "files": [str(data / "spec-3-60000-3.fits"), str(data / "spec-2-60000-2.fits")]}
    done = _side_by_side([_as_ordinary_user(sys.executable, "-m", "specq.cli", "run", "--pipeline", "bossnet",
                                            "-o", str(tmp_path / f"out-{name}.csv"), *args)
                          for name, args in runs.items()], cwd=data)
    for (name, args), out in zip(runs.items(), done):
        assert out.returncode == 0, out.stderr[-3000:]
        rows = {r["path"]: r for r in Table.read(tmp_path / f"out-{name}.csv")}
        if len(args) == 1:
            assert set(rows) == {f"spec-{i}-60000-{i}.fits" for i in (1, 2, 3, 4)}
            assert str(rows["spec-1-60000-1.fits"]["flag_bad"]) == "False"  # CSV: the text of the bool
            assert "a folder" in rows["spec-4-60000-4.fits"]["error"]
        assert str(rows["spec-2-60000-2.fits"]["flag_bad"]) == "True"
        assert "permission denied" in rows["spec-2-60000-2.fits"]["error"]
        assert "spec-2-60000-2.fits" in rows["spec-2-60000-2.fits"]["error"]
        assert "broken link" in rows["spec-3-60000-3.fits"]["error"] and "gone.fits" in rows["spec-3-60000-3.fits"]["error"]


def test_python_dash_m_specq_is_the_specq_command():
    done = subprocess.run([sys.executable, "-m", "specq", "--version"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("specq "), done.stderr


def test_an_empty_or_missing_default_store_points_to_the_demo_results(tmp_path):
    """After `specq demo`, the next commands read the default store, not the demo's: they say where the demo's are."""
    from workers.store import ResultStore

    state = tmp_path / "state"
    demo_store = state / "demo" / "results.sqlite"
    demo_store.parent.mkdir(parents=True)
    ResultStore(f"sqlite:///{demo_store}").create()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECQ_")}
    env.update(SPECQ_STATE_DIR=str(state), SPECQ_CONFIG=os.devnull, PYTHONPATH=str(ROOT))

    def specq(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "specq.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    hint = f"the demo's results are in {demo_store} (SPECQ_DATABASE_URL='sqlite:///{demo_store}')"
    _one_line_error(specq("results", "export", "-o", "x.csv"), "no result database at", hint)
    status = specq("status")
    assert status.returncode == 0, status.stderr[-2000:]
    assert f"results: no result database at {state / 'results.sqlite'}; {hint}" in status.stdout, status.stdout
    assert not (state / "results.sqlite").exists()  # looking did not make an empty store

    ResultStore(f"sqlite:///{state / 'results.sqlite'}").create()  # the default store, empty
    export = specq("results", "export", "--pipeline", "bossnet", "-o", "b.fits")
    assert export.returncode == 0 and (tmp_path / "b.fits").exists()  # a named pipeline's file, empty
    assert f"note: the store (sqlite:///{state / 'results.sqlite'}) holds no bossnet results; {hint}" \
        in export.stderr, export.stderr
    export = specq("results", "export", "-o", "all.fits")
    assert export.returncode == 1 and f"holds no results; {hint}" in export.stderr, export.stderr
    summary = specq("results", "summary")
    assert summary.returncode == 0 and f"note: this store holds no results; {hint}" in summary.stderr
    env["SPECQ_DATABASE_URL"] = f"sqlite:///{state / 'results.sqlite'}"  # a store chosen: nothing else named
    chosen = specq("results", "export", "-o", "x.csv")
    assert chosen.returncode == 1 and "demo" not in chosen.stderr, chosen.stderr


def test_a_worker_on_a_queue_no_pipeline_is_routed_to_is_refused(tmp_path):
    line = _one_line_error(_specq("worker", "--queues", "gpus", cwd=tmp_path), "--queues: no pipeline is routed to gpus")
    assert "the pipelines' queues: cpu, gpu" in line
    _one_line_error(_specq("worker", "--queues", "gpu.bulk,cpus", cwd=tmp_path), "no pipeline is routed to cpus")


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path):
    """``specq schema | head -1``: no traceback once the reader has gone, whatever the command."""
    from workers.store import ResultStore

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    ResultStore(url).create()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPECQ_DATABASE_URL": url}
    for args in (["schema"], ["schema", "--json"], ["results", "summary"]):
        read, write = os.pipe()
        os.close(read)  # the reader gone before the first line: every write meets a closed pipe
        try:
            done = subprocess.run([sys.executable, "-m", "specq.cli", *args], stdout=write, stderr=subprocess.PIPE,
                                  cwd=tmp_path, env=env, text=True, timeout=300)
        finally:
            os.close(write)
        assert done.returncode in (0, 141), (args, done.returncode, done.stderr[-3000:])
        assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, (args, done.stderr[-3000:])


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch):
    """Only a reader of stdout that has gone ends a command quietly: a broker's or a child's pipe is a failure."""
    from specq import cli
    from specq.cli import schema

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(schema, "cmd_schema", broken)
    with pytest.raises(BrokenPipeError):
        cli.main(["schema"])


def test_results_until_not_after_since_is_one_line(tmp_path):
    for command in ("export", "plot"):
        out = _specq("results", command, "--since", "2025-03-15", "--until", "2025-03-14", "-o", tmp_path / "x.csv",
                     cwd=tmp_path, SPECQ_DATABASE_URL=f"sqlite:///{tmp_path / 'r.sqlite'}")
        _one_line_error(out, "--until 2025-03-14T00:00:00+00:00 is not after --since 2025-03-15T00:00:00+00:00")
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "r.sqlite").exists()
