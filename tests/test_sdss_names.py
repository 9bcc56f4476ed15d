"""Spectra named the SDSS way: releases, products, keywords, target tables and the user's mistakes."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import RecordingApp
from tasks import sdss_names
from tasks.sdss_names import SdssNameError, named_refs

# sdss-access is a test dependency: missing, every test here fails. Imported as the
# producer imports it: a direct import makes ~/sas, which two test processes race to do.
with sdss_names._LOCK:
    sdss_names._sdss_access()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPEC_LITE = {"run2d": "v6_1_3", "fieldid": "101077", "mjd": "59846", "catalogid": "27021597000000001"}
SPEC_LITE_PATH = "dr19/spectro/boss/redux/v6_1_3/spectra/lite/101077/59846/spec-101077-59846-27021597000000001.fits"
CASES = {
    "specLite": (SPEC_LITE, SPEC_LITE_PATH),
    "mwmStar": ({"v_astra": "0.6.0", "sdss_id": "12345678"},
                "dr19/spectro/astra/0.6.0/spectra/star/56/78/mwmStar-0.6.0-12345678.fits"),
    "mwmVisit": ({"v_astra": "0.6.0", "sdss_id": "12345678"},
                 "dr19/spectro/astra/0.6.0/spectra/visit/56/78/mwmVisit-0.6.0-12345678.fits"),
    "apStar": ({"apred": "1.4", "telescope": "apo25m", "healpix": "12345", "obj": "2M00000000+0000000"},
               "dr19/spectro/apogee/redux/1.4/stars/apo25m/12/12345/apStar-1.4-apo25m-2M00000000+0000000.fits"),
}


@pytest.mark.parametrize("product", sorted(CASES))
def test_each_product_by_keywords(product):
    keywords, path = CASES[product]
    (ref,) = named_refs("dr19", product, keywords)
    assert ref.path == path and ref.hdu is None and ref.row is None
    ids = {k: int(v) for k, v in keywords.items() if k in ("sdss_id", "catalogid")}
    assert dict(ref.ids) == ids


def test_names_make_no_folder_but_their_own_and_read_no_shared_one(tmp_path):
    """sdss-access makes its SAS_BASE_DIR when it is missing (at the root of the disk or in
    ~/sas, which a user may not be allowed to do) and looks there for compressed copies of the
    file it names. Names are built under an empty folder of the process's own, removed at exit:
    a compressed copy left in the shared temporary folder changes nothing."""
    shared = tmp_path / "tmp"
    (shared / "dr19/spectro/boss/redux/v6_1_3/spectra/lite/101077/59846").mkdir(parents=True)
    (shared / (SPEC_LITE_PATH + ".gz")).write_bytes(b"left by someone else")
    script = (
        "import os\n"
        "from tasks import sdss_names\n"
        "def refuse(*args, **kwargs):\n"
        "    raise PermissionError(f'no folder may be made: {args[0]}')\n"
        "os.makedirs = refuse\n"
        f"(ref,) = sdss_names.named_refs('dr19', 'specLite', {SPEC_LITE!r})\n"
        "print(ref.path)\n"
        "print(sdss_names.release('dr17').location('apStar', apred='dr17', apstar='stars', "
        "telescope='apo25m', field='M67', prefix='ap', obj='2M08512546+1148165'))\n"
        "print(sdss_names._archive_root())\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SAS_BASE_DIR", "TREE_DIR")}
    env.update(HOME=str(home), PYTHONPATH=ROOT, TMPDIR=str(shared))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    spec_lite, apstar, private = done.stdout.split()
    assert [spec_lite, apstar] == [SPEC_LITE_PATH,
                                   "dr17/apogee/spectro/redux/dr17/stars/apo25m/M67/apStar-dr17-2M08512546+1148165.fits"]
    assert os.path.dirname(private) == str(shared) and not os.path.exists(private)  # its own, gone at exit
    assert list(home.iterdir()) == []


def test_releases_build_their_own_paths_and_leave_the_environment_alone():
    before = dict(os.environ)
    dr17 = sdss_names.release("dr17").location("apStar", apred="dr17", apstar="stars", telescope="apo25m",
                                                field="M67", prefix="ap", obj="2M08512546+1148165")
    dr19 = sdss_names.release("DR19").location("apStar", **CASES["apStar"][0])
    again = sdss_names.release("dr17").location("apStar", apred="dr17", apstar="stars", telescope="apo25m",
                                                 field="M67", prefix="ap", obj="2M08512546+1148165")
    assert dr17 == again == "dr17/apogee/spectro/redux/dr17/stars/apo25m/M67/apStar-dr17-2M08512546+1148165.fits"
    assert dr19 == CASES["apStar"][1]
    assert dict(os.environ) == before


@pytest.mark.parametrize("suffix", [".csv", ".fits", ".parquet"])
def test_a_table_names_one_spectrum_per_row_with_its_photometry_and_ids(tmp_path, suffix):
    from astropy.table import Table

    table = Table({"RUN2D": ["v6_1_3", "v6_1_3"], "FIELDID": [101077, 15000], "MJD": [59846, 59900],
                   "CATALOGID": [27021597000000001, 27021597000000002], "SDSS_ID": [11, 12],
                   "K_MAG": [11.5, float("nan")], "ebv": [0.05, 0.07], "ra": [10.0, 11.0]})
    path = tmp_path / f"targets{suffix}"
    table.write(path)
    refs = named_refs("dr19", "specLite", table=path)
    assert [r.path for r in refs] == [
        SPEC_LITE_PATH, "dr19/spectro/boss/redux/v6_1_3/spectra/lite/015000/59900/spec-015000-59900-27021597000000002.fits"]
    assert dict(refs[0].photometry) == {"k_mag": 11.5, "ebv": 0.05}
    assert dict(refs[1].photometry) == {"ebv": 0.07}  # a NaN is no value
    assert dict(refs[0].ids) == {"sdss_id": 11, "catalogid": 27021597000000001}


def test_keywords_fill_in_what_a_table_lacks(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("fieldid,mjd,catalogid\n101077,59846,27021597000000001\n")
    (ref,) = named_refs("dr19", "specLite", {"run2d": "v6_1_3"}, table=path)
    assert ref.path == SPEC_LITE_PATH


@pytest.mark.parametrize("args, says", [
    (("dr19", "specLite", {"run2d": "v6_1_3"}), "missing fieldid, mjd, catalogid"),
    (("dr19", "spec", SPEC_LITE), "unknown product 'spec'"),
    (("dr77", "specLite", SPEC_LITE), "unknown release 'dr77'"),
    (("dr17", "mwmStar", {"v_astra": "1", "sdss_id": "2"}), "release dr17 has no mwmStar"),
    (("dr19", "specLite", {**SPEC_LITE, "run2d": "../../etc"}), "run2d='../../etc' is not a plain name"),
    (("dr19", "specLite", {**SPEC_LITE, "colour": "red"}), "not colour"),
])
def test_names_that_name_nothing_are_refused(args, says):
    with pytest.raises(SdssNameError, match=says):
        named_refs(*args)


def test_a_table_row_missing_a_keyword_is_named(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("run2d,fieldid,mjd,catalogid\nv6_1_3,101077,59846,27021597000000001\nv6_1_3,101077,,5\n")
    with pytest.raises(SdssNameError, match=r"row 2: .*missing mjd"):
        named_refs("dr19", "specLite", table=path)


def test_submit_takes_the_names_as_keyword_arguments(tmp_path):
    from tasks.producer import submit
    from workers.settings import load_settings

    settings = load_settings(data_root="https://data.sdss.org/sas")
    app = RecordingApp(settings)
    sent = app.sent
    sub = submit(release="dr19", product="mwmStar", v_astra="0.6.0", sdss_id=12345678, k_mag=9.5,
                 pipelines=None, settings=settings, celery_app=app)
    # mwmStar holds BOSS and APOGEE spectra: every pipeline of either instrument gets it.
    assert sorted(name for name, _ in sent) == ["specq.astronn_dist", "specq.bossnet", "specq.bossnet_apogee"]
    for _, refs in sent:
        assert refs == [{"path": CASES["mwmStar"][1], "hdu": None, "row": None, "ids": {"sdss_id": 12345678}, "photometry": {"k_mag": 9.5}}]
    assert sub.n_spectra == 3
    sent.clear()
    submit(release="dr19", product="specLite", pipelines="bossnet,astronn_dist", settings=settings,
           celery_app=app, **SPEC_LITE)
    assert [name for name, _ in sent] == ["specq.bossnet"]  # specLite holds no APOGEE spectra
    with pytest.raises(SdssNameError, match="needs --release"):
        submit(product="specLite", settings=settings, celery_app=app, **SPEC_LITE)


def _specq(*args, env_extra=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECQ_")}
    env.update({"PYTHONPATH": ROOT, "SPECQ_STATE_DIR": os.environ["SPECQ_STATE_DIR"],
                "SPECQ_DATA_ROOT": "https://data.sdss.org/sas"}, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "specq.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args, says", [
    (["--release", "dr19", "--product", "specLite", "run2d=v6_1_3"], "missing fieldid, mjd, catalogid"),
    (["--release", "dr19", "--product", "sspec", "mjd=1"], "unknown product 'sspec'"),
    (["--release", "dr5x", "--product", "specLite", "mjd=1"], "unknown release 'dr5x'"),
    (["--product", "specLite", "mjd=1"], "needs --release"),
    (["--release", "dr19", "mjd=1"], "needs --product"),
    (["--release", "dr19", "--product", "specLite"], "by keywords (name=value) or by --table"),
    (["--release", "dr19", "--product", "specLite", "59846"], "'59846': give a product's keywords as name=value"),
    (["--release", "dr19", "--product", "specLite", "--table", "nowhere.csv"], "--table nowhere.csv: no such file"),
])
@pytest.mark.parametrize("command", ["enqueue", "run"])
def test_cli_mistakes_are_one_line_and_exit_2(command, args, says):
    extra = ["-o", os.devnull + ".csv"] if command == "run" else []
    done = _specq(command, *args, *extra)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr


def test_specq_run_reads_a_spectrum_named_the_sdss_way_from_a_url_root(tmp_path, monkeypatch):
    """The example of docs/remote-data.md, against an archive served here."""
    import fsspec  # noqa: F401  (a test dependency: missing, it fails)
    from specq.cli import main
    from specq.testing.http_server import ArchiveServer
    from specq.testing.synthetic import write_spec_lite
    from workers.export import read_results

    write_spec_lite(tmp_path / "sas" / SPEC_LITE_PATH, teff=5600, logg=4.3, fe_h=-0.2, v_r=10.0, snr=50.0, seed=2,
                    catalogid=27021597000000001, field=101077, mjd=59846)
    with ArchiveServer(tmp_path / "sas") as server:
        monkeypatch.setenv("SPECQ_DATA_ROOT", server.url)
        out = tmp_path / "dr19.csv"
        assert main(["run", "--release", "dr19", "--product", "specLite", *(f"{k}={v}" for k, v in SPEC_LITE.items()),
                     "--draws", "2", "--seed", "1", "--quiet", "-o", str(out)]) == 0
    (row,) = read_results(out)
    assert row["path"] == SPEC_LITE_PATH and not row["flag_bad"] and row["teff"] > 0
    assert row["catalogid"] == 27021597000000001


RUN = dict(demo_weights=True, draws=2, seed=1)


def _archive(root, *catalogids):
    """Synthetic spec-lite files where sdss-access puts them under ``root`` (field 101077, MJD 59846)."""
    from specq.testing.synthetic import write_spec_lite

    for n, catalogid in enumerate(catalogids):
        path = SPEC_LITE_PATH.replace(SPEC_LITE["catalogid"], str(catalogid))
        write_spec_lite(root / path, teff=5600 + 100 * n, logg=4.3, fe_h=-0.2, v_r=10.0, snr=50.0, seed=2 + n,
                        catalogid=catalogid, field=101077, mjd=59846)
    return root


def test_predict_takes_the_names_of_specq_run_from_a_url_root(tmp_path, monkeypatch):
    import fsspec  # noqa: F401  (a test dependency: missing, it fails)
    import specq
    from specq.testing.http_server import ArchiveServer

    root = _archive(tmp_path / "sas", SPEC_LITE["catalogid"])
    with ArchiveServer(root) as server:
        monkeypatch.setenv("SPECQ_DATA_ROOT", server.url)
        named = specq.predict(release="dr19", product="specLite", **SPEC_LITE, **RUN)
    monkeypatch.setenv("SPECQ_DATA_ROOT", str(root))
    local = specq.predict(root / SPEC_LITE_PATH, **RUN)
    assert list(named["path"]) == list(local["path"]) == [SPEC_LITE_PATH]
    assert not named["flag_bad"][0] and named["catalogid"][0] == int(SPEC_LITE["catalogid"])
    for column in ("teff", "e_teff", "logg", "fe_h", "bn_v_r"):
        assert named[column][0] == local[column][0], column


def test_predict_and_submit_take_a_target_table(tmp_path):
    import specq
    from astropy.table import Table
    from workers.settings import load_settings

    ids = [27021597000000001, 27021597000000002]
    root = _archive(tmp_path / "sas", *ids)
    targets = Table({"RUN2D": ["v6_1_3"] * 2, "FIELDID": [101077] * 2, "MJD": [59846] * 2, "CATALOGID": ids,
                     "SDSS_ID": [11, 12]})
    rows = specq.predict(targets, "bossnet", release="dr19", product="specLite", data_root=root, **RUN)
    assert [p.rsplit("-", 1)[-1] for p in rows["path"]] == [f"{i}.fits" for i in ids]
    assert list(rows["sdss_id"]) == [11, 12] and not rows["flag_bad"].any()
    # A pandas DataFrame, with a keyword for the column it lacks, to the workers.
    frame = targets.to_pandas().drop(columns="RUN2D")
    settings = load_settings(data_root=str(root))
    app = RecordingApp(settings)
    sub = specq.submit(frame, release="dr19", product="specLite", run2d="v6_1_3", settings=settings, celery_app=app)
    sent = [(name, [r["path"] for r in message]) for name, message in app.sent]
    assert sent == [("specq.bossnet", list(rows["path"]))]
    assert sub.n_spectra == 2


@pytest.mark.parametrize("call", ["predict", "submit"])
@pytest.mark.parametrize("args, kwargs, says", [
    ((), {"release": "dr19", "product": "specLite", "run2d": "v6_1_3"}, "missing fieldid, mjd, catalogid"),
    ((), {"release": "dr19", "product": "sspec", **SPEC_LITE}, "unknown product 'sspec'"),
    ((), {"release": "dr5x", "product": "specLite", **SPEC_LITE}, "unknown release 'dr5x'"),
    ((), {"product": "specLite", **SPEC_LITE}, "need release="),
    ((), {"release": "dr19", **SPEC_LITE}, "need product="),
    ((), {"release": "dr19", "product": "specLite"}, "by their keywords (e.g. mjd=59846) or by a table"),
    ((), {"release": "dr19", "product": "specLite", **SPEC_LITE, "mjd": [59846, 59847]}, "one value per keyword"),
    ((), {"mjd": 59846}, "unknown argument mjd"),
    (("nowhere.csv",), {"release": "dr19", "product": "specLite"}, "--table nowhere.csv: no such file"),
    ((["a.fits"],), {"release": "dr19", "product": "specLite"}, "a target table is a path"),
    (("t.csv",), {"table": "t.csv", "release": "dr19", "product": "specLite"}, "give the target table once"),
])
def test_python_mistakes_are_one_clear_error(call, args, kwargs, says):
    import specq

    with pytest.raises(specq.SpecqError, match=re.escape(says)):
        getattr(specq, call)(*args, **kwargs)


def test_only_the_producer_imports_sdss_access():
    import ast
    from pathlib import Path

    importers = set()
    for top in ("specq", "tasks", "workers"):
        for path in (Path(ROOT) / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n.split(".")[0] in ("sdss_access", "tree") for n in names):
                    importers.add(path.relative_to(ROOT).as_posix())
    assert importers == {"tasks/sdss_names.py"}
    code = ("import sys, tasks.producer, tasks.runner, workers.engine, workers.remote; "
            "assert 'sdss_access' not in sys.modules and 'fsspec' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0
