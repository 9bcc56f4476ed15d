"""`specq weights install | list | verify`, the start-up weights check, and demo weights only when asked.

The published weights are not available here: the tests build chunks in the published
format (one ``torch.save`` cut into ten as BOSSNet's ``chop_model.py`` cut it) from seeded
random weights, and a manifest describing them, passed with ``--manifests`` or
``SPECQ_WEIGHTS_MANIFESTS``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, wait_for, worker_env
from specq.cli import main
from workers.weights.formats import WeightsError, published_chunk_sizes, save_chunks, save_pt
from workers.weights.inspection import identify
from workers.weights.install import install
from workers.weights.manifest import load_manifest, parse_manifest
from workers.weights.verify import NoWeightsError, check_ready

BOSSNET_KEYS = ("first_conv.conv_layer.weight", "res_blocks.3.conv2.weight", "linear_sequential.6.weight")
ASTRONN_KEYS = ("input_mean", "labels_std", "dense_1.weight", "dense_var.weight")


def seeded_state_dict(keys, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(64, generator=g) for k in keys}


def chunk_paths(folder: Path) -> list[Path]:
    return [folder / f"model_chunk_{i}" for i in range(10)]


def flip_byte(path: Path, at: int = 7) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def published(tmp_path):
    """A clone-like tree holding seeded chunks at bossnet/model_boss/, and manifests describing them."""
    clone = tmp_path / "BOSSNet"
    chunks = save_chunks(seeded_state_dict(BOSSNET_KEYS, seed=5), clone / "bossnet" / "model_boss")
    files, _ = identify(chunk_paths(chunks))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    real = (ROOT / "weights" / "bossnet.toml").read_text()
    described = "".join(f'[[files]]\nname = "{f.name}"\nsize = {f.size}\ngit_blob = "{f.git_blob}"\n\n'
                        for f in files)
    (manifests / "bossnet.toml").write_text(real[:real.index("[[files]]")] + described)
    shutil.copy(ROOT / "weights" / "astronn_dist.toml", manifests)
    return clone, chunks, manifests


def test_the_repository_manifests_describe_the_published_files():
    boss = parse_manifest(ROOT / "weights" / "bossnet.toml")
    assert boss.format == "chunks" and [f.name for f in boss.files] == [f"model_chunk_{i}" for i in range(10)]
    assert boss.files[0].git_blob == "97489ec1be7b7fd67a15a6939ac637334d78b6ae" and boss.has_identity
    assert boss.install_as == {"chunks": "bossnet", "pt": "bossnet.pt"}
    assert any("hutchresearch/BOSSNet" in p["repository"] and p["path"] == "bossnet/model_boss/"
               for p in boss.published)
    astro = parse_manifest(ROOT / "weights" / "astronn_dist.toml")
    assert astro.format == "pt" and astro.state_key == "model_state_dict" and not astro.has_identity
    assert "astroNN_dist_model_parameter.pt" in astro.published[0]["path"]
    # Found at run time by pipeline name; git tracks them (the weight files themselves stay ignored).
    assert load_manifest("bossnet").path == ROOT / "weights" / "bossnet.toml"
    ignored = subprocess.run(["git", "check-ignore", "weights/bossnet.toml", "weights/astronn_dist.toml",
                              "weights/model_chunk_0"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert ignored == ["weights/model_chunk_0"]


def test_save_chunks_cuts_as_the_published_chunks_were_cut(tmp_path):
    folder = save_chunks(seeded_state_dict(BOSSNET_KEYS, seed=1), tmp_path / "c")
    sizes = [p.stat().st_size for p in chunk_paths(folder)]
    assert sizes == published_chunk_sizes(sum(sizes), 10) and sizes[-1] >= sizes[0]


def test_install_accepts_the_published_chunks_and_refuses_a_changed_one_naming_it(tmp_path, published, capsys):
    clone, chunks, manifests = published
    folder = tmp_path / "installed"
    # A changed copy first: refused, the file named, nothing installed.
    changed = tmp_path / "changed"
    shutil.copytree(chunks, changed)
    flip_byte(changed / "model_chunk_3")
    assert main(["weights", "--manifests", str(manifests), "install", str(changed)]) == 1
    err = capsys.readouterr().err
    assert f"{changed / 'model_chunk_3'}: git blob" in err and "model_chunk_2" not in err
    assert not folder.exists()
    # The clone: its bossnet/model_boss/ is found and installed, with a record.
    done = install(clone, folder, manifests_dir=manifests)
    assert done.pipeline == "bossnet" and done.status == "published" and done.path == folder / "bossnet"
    record = json.loads((folder / "bossnet.install.json").read_text())
    whole = b"".join(p.read_bytes() for p in chunk_paths(chunks))
    assert record["sha256"] == hashlib.sha256(whole).hexdigest() == done.sha256
    assert [f["name"] for f in record["files"]] == [p.name for p in chunk_paths(chunks)]
    assert [(folder / "bossnet" / p.name).read_bytes() for p in chunk_paths(chunks)] == \
           [p.read_bytes() for p in chunk_paths(chunks)]


@pytest.mark.parametrize("command", [["list"], ["verify"], ["install", "somewhere"]])
def test_a_manifests_folder_that_is_not_there_is_one_line(tmp_path, monkeypatch, capsys, command):
    nowhere = tmp_path / "nowhere"
    assert main(["weights", "--manifests", str(nowhere), *command]) == 2
    assert capsys.readouterr().err == f"specq: error: --manifests {nowhere}: no such folder\n"
    monkeypatch.setenv("SPECQ_WEIGHTS_MANIFESTS", str(nowhere))
    assert main(["weights", *command]) == 2
    assert capsys.readouterr().err == f"specq: error: SPECQ_WEIGHTS_MANIFESTS {nowhere}: no such folder\n"


def test_a_manifests_folder_named_for_a_worker_names_its_setting_and_an_incomplete_manifest_is_refused(tmp_path):
    from workers.weights.formats import WeightsError
    from workers.weights.manifest import load_manifests, manifest_dirs

    with pytest.raises(WeightsError, match=r"\(weights_manifests, SPECQ_WEIGHTS_MANIFESTS\): no such folder$"):
        manifest_dirs(tmp_path / "nowhere")
    (tmp_path / "bossnet.toml").write_text('format = "chunks"\n')  # a manifest, not passed over as a config file is
    with pytest.raises(WeightsError, match=r"bossnet.toml: no '\w+' field \(see weights/README.md\)$"):
        load_manifests(tmp_path)


def test_install_passes_over_other_toml_files_beside_the_manifests(tmp_path, published, monkeypatch, capsys):
    clone, _, manifests = published
    monkeypatch.setenv("SPECQ_WEIGHTS_DIR", str(tmp_path / "installed"))
    (manifests / "specq.toml").write_text("[specq]\nchunk_size = 4\n")  # a config file, not a manifest
    assert main(["weights", "--manifests", str(manifests), "install", "--pipeline", "bossnet", str(clone)]) == 0
    assert main(["weights", "--manifests", str(manifests), "install", str(clone)]) == 0
    assert capsys.readouterr().out.count("bossnet: installed") == 2
    # a manifest that lacks a field is named with the field, in one line
    (manifests / "bossnet.toml").write_text((manifests / "bossnet.toml").read_text().replace('format = "chunks"', ""))
    for pipeline in (["--pipeline", "bossnet"], []):
        assert main(["weights", "--manifests", str(manifests), "install", *pipeline, str(clone)]) == 1
        assert capsys.readouterr().err == (f"specq weights install: weights manifest {manifests / 'bossnet.toml'}: "
                                           f"no 'format' field (see weights/README.md)\n")


def test_a_missing_chunk_is_refused_even_when_unpublished_weights_are_allowed(tmp_path, published):
    _, chunks, manifests = published
    (chunks / "model_chunk_9").unlink()
    with pytest.raises(WeightsError, match=r"model_chunk_9: missing"):
        install(chunks, tmp_path / "w", manifests_dir=manifests, allow_unpublished=True)


def test_own_weights_install_as_unverified_only_when_allowed(tmp_path, published):
    _, _, manifests = published
    own = save_chunks(seeded_state_dict(BOSSNET_KEYS, seed=99), tmp_path / "own")
    with pytest.raises(WeightsError, match="--allow-unpublished"):
        install(own, tmp_path / "w", manifests_dir=manifests)
    done = install(own, tmp_path / "w", manifests_dir=manifests, allow_unpublished=True)
    assert done.status == "unverified"


def test_a_pt_of_the_published_bytes_is_published_and_replaces_the_chunks(tmp_path, published):
    _, chunks, manifests = published
    folder = tmp_path / "w"
    install(chunks, folder, manifests_dir=manifests)
    pt = save_pt(seeded_state_dict(BOSSNET_KEYS, seed=5), tmp_path / "any-name.pt")  # same bytes, one file
    done = install(pt, folder, manifests_dir=manifests)  # the pipeline recognised from the tensor names
    assert (done.pipeline, done.status, done.path) == ("bossnet", "published", folder / "bossnet.pt")
    assert done.replaced == [folder / "bossnet"] and not (folder / "bossnet").exists()


def test_astronn_pt_installs_unverified_then_verify_catches_a_change(tmp_path, published, monkeypatch, capsys):
    _, _, manifests = published
    folder = tmp_path / "w"
    monkeypatch.setenv("SPECQ_WEIGHTS_DIR", str(folder))
    pt = save_pt({"model_state_dict": seeded_state_dict(ASTRONN_KEYS, seed=2)}, tmp_path / "model.pt")
    assert main(["weights", "--manifests", str(manifests), "install", str(pt)]) == 0
    assert "astronn_dist: installed" in capsys.readouterr().out
    record = json.loads((folder / "astronn_dist.install.json").read_text())
    assert record["status"] == "unverified" and record["files"][0]["name"] == "astronn_dist.pt"
    assert main(["weights", "--manifests", str(manifests), "verify"]) == 0
    listed = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert any(line.startswith(f"astronn_dist unverified astronn_dist.pt sha256 {record['sha256']}") for line in listed)
    assert "bossnet not installed" in listed
    flip_byte(folder / "astronn_dist.pt", at=200)
    assert main(["weights", "--manifests", str(manifests), "verify"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and f"{folder / 'astronn_dist.pt'}: git blob" in out
    assert main(["weights", "--manifests", str(manifests), "list"]) == 1  # a listed MISMATCH fails too
    assert "MISMATCH" in capsys.readouterr().out


def test_demo_weights_are_listed_as_demo_and_never_installed(tmp_path, published, monkeypatch, capsys):
    from workers.astronn_dist.network import demo_weights_path

    _, _, manifests = published
    folder = tmp_path / "w"
    from workers.bossnet.weights import demo_weights_path as bossnet_demo_weights_path

    demo = demo_weights_path(folder)
    rvs = bossnet_demo_weights_path(folder, "gaia_rvs")  # named by its source: bossnet-gaia_rvs-demo
    boss = bossnet_demo_weights_path(folder)
    monkeypatch.setenv("SPECQ_WEIGHTS_DIR", str(folder))
    assert main(["weights", "--manifests", str(manifests), "list"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[:3] for line in out.splitlines()]
    assert ["astronn_dist", "demo", demo.name] in listed and ["bossnet_gaia_rvs", "demo", f"{rvs.name}/"] in listed
    # LAMOST runs BOSS's network: BOSS's demo weights are its own
    assert ["bossnet", "demo", f"{boss.name}/"] in listed and ["bossnet_lamost", "demo", f"{boss.name}/"] in listed
    assert sum(line[1] == "demo" for line in listed) == 4
    assert len({line.index(" sha256 ") for line in out.splitlines() if " sha256 " in line}) == 1, "in columns"
    with pytest.raises(WeightsError, match="demo weights"):
        install(demo, tmp_path / "elsewhere", pipeline="astronn_dist", manifests_dir=manifests)


def test_start_check_refuses_nothing_partial_or_changed(tmp_path, published):
    from workers.settings import load_settings

    _, chunks, manifests = published
    folder = tmp_path / "w"
    settings = load_settings(weights_dir=folder, weights_manifests=manifests, demo_weights=False)
    names = ("bossnet", "model_boss")
    with pytest.raises(NoWeightsError, match=rf"looked in {folder} for bossnet, model_boss\. "
                                             r"Install them with `specq weights install PATH`"):
        check_ready("bossnet", settings, names)
    settings.demo_weights = True
    assert check_ready("bossnet", settings, names) is None  # asked for: demo weights
    install(chunks, folder, manifests_dir=manifests)
    assert check_ready("bossnet", settings, names).status == "published"
    flip_byte(folder / "bossnet" / "model_chunk_6")
    with pytest.raises(WeightsError, match=r"partial or changed: .*model_chunk_6: git blob"):
        check_ready("bossnet", settings, names)
    (folder / "bossnet" / "model_chunk_6").unlink()
    with pytest.raises(WeightsError, match=r"model_chunk_6: missing"):
        check_ready("bossnet", settings, names)


def test_run_without_weights_stops_with_one_line_unless_demo_is_asked(tmp_path, monkeypatch, capsys):
    from specq.testing import synthetic

    monkeypatch.delenv("SPECQ_DEMO_WEIGHTS")
    monkeypatch.setenv("SPECQ_WEIGHTS_DIR", str(tmp_path / "empty"))
    spec = tmp_path / "spec-1-2-3.fits"
    synthetic.write_spec_lite(spec, teff=5200, logg=4.4, fe_h=-0.3, v_r=20, snr=30, seed=1)
    out = tmp_path / "out.csv"
    assert main(["run", "--quiet", "-o", str(out), str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"looked in {tmp_path / 'empty'}" in err[0] and "specq weights install" in err[0]
    assert not out.exists()
    assert main(["run", "--demo-weights", "--draws", "1", "--quiet", "-o", str(out), str(spec)]) == 0
    assert "DEMO WEIGHTS" in capsys.readouterr().out


def test_worker_refuses_to_start_on_a_changed_folder(tmp_path, published, start_worker):
    """A real `celery -A tasks worker`: exit status 2 and one line, before it takes any work."""
    _, chunks, manifests = published
    folder = tmp_path / "w"
    install(chunks, folder, manifests_dir=manifests)
    flip_byte(folder / "bossnet" / "model_chunk_0")
    env = worker_env(tmp_path, tmp_path, f"sqlite:///{tmp_path / 'r.sqlite'}", SPECQ_WEIGHTS_DIR=folder,
                     SPECQ_WEIGHTS_MANIFESTS=manifests)
    env.pop("SPECQ_DEMO_WEIGHTS")
    worker = start_worker(env, queues="gpu")
    wait_for(lambda: worker.proc.poll() is not None, 60, what="the worker to exit", on_fail=worker.log_text)
    assert worker.proc.returncode == 2
    said = [line for line in worker.log_text().splitlines() if line.startswith("specq:")]
    assert len(said) == 1 and f"{folder / 'bossnet' / 'model_chunk_0'}: git blob" in said[0], worker.log_text()
    assert "ready" not in worker.log_text()


def test_specq_worker_without_weights_exits_2(tmp_path):
    env = worker_env(tmp_path, tmp_path, f"sqlite:///{tmp_path / 'r.sqlite'}", SPECQ_WEIGHTS_DIR=tmp_path / "none")
    env.pop("SPECQ_DEMO_WEIGHTS")
    done = subprocess.run([sys.executable, "-m", "specq.cli", "worker", "-Q", "cpu"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("specq:")]
    assert len(said) == 1 and said[0].startswith("specq: no published weights for astronn_dist: looked in "
                                                 f"{tmp_path / 'none'}"), done.stderr


def test_install_and_verify_load_no_torch(tmp_path, published):
    _, chunks, manifests = published
    code = ("import sys; from specq.cli import main; "
            f"assert main(['weights', '--manifests', {str(manifests)!r}, 'install', {str(chunks)!r}]) == 0; "
            f"assert main(['weights', '--manifests', {str(manifests)!r}, 'verify']) == 0; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "SPECQ_WEIGHTS_DIR": str(tmp_path / "w")})
    assert done.returncode == 0, done.stderr


def test_status_counts_demo_rows_per_pipeline(tmp_path):
    from specq.status import collect, render
    from workers.settings import load_settings
    from workers.store import ResultStore

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    store = ResultStore(url)

    def row(key, demo):
        return dict(spectrum_key=key, path=key.split(":")[0], hdu=1, row=0, teff=5000.0, result_flags=0,
                    flag_warn=False, flag_bad=False, model_sha256=("d" if demo else "p") * 64, demo_weights=demo,
                    task_id="t")

    store.write("bossnet", [row("a.fits:1:0", True), row("b.fits:1:0", True), row("c.fits:1:0", False)])
    counts = store.demo_counts()
    assert counts["bossnet"] == 2 and counts["astronn_dist"] == 0 and sum(counts.values()) == 2
    text = render(collect(load_settings(database_url=url)))
    assert "results bossnet" in text and "2 with demo weights" in text
    assert [line for line in text.splitlines() if line.startswith("results astronn_dist")][0].endswith(
        "0 with demo weights")


@pytest.mark.parametrize("cut", ["model_chunk_4", "model_chunk_9"])
def test_a_truncated_chunk_is_refused_even_when_unpublished_weights_are_allowed(tmp_path, published, cut):
    _, _, manifests = published
    own = save_chunks(seeded_state_dict(BOSSNET_KEYS, seed=99), tmp_path / "own")
    (own / cut).write_bytes((own / cut).read_bytes()[:100])
    with pytest.raises(WeightsError, match=rf"refusing to install {own}: not a torch.save file"):
        install(own, tmp_path / "w", manifests_dir=manifests, allow_unpublished=True)
    assert not (tmp_path / "w" / "bossnet").exists()


def test_chunks_of_another_model_are_refused_even_when_unpublished_weights_are_allowed(tmp_path, published):
    _, _, manifests = published
    other = save_chunks(seeded_state_dict(ASTRONN_KEYS, seed=3), tmp_path / "other")
    with pytest.raises(WeightsError, match=r"lacks bossnet tensors \['first_conv"):
        install(other, tmp_path / "w", pipeline="bossnet", manifests_dir=manifests, allow_unpublished=True)


@pytest.mark.parametrize("form", ["chunks", "pt"])
def test_installing_over_a_symlinked_weights_folder_replaces_the_link_and_spares_its_target(tmp_path, published,
                                                                                          form):
    _, chunks, manifests = published
    folder = tmp_path / "w"
    folder.mkdir()
    target = shutil.copytree(chunks, tmp_path / "SDSS" / "deconstructed_model")
    (folder / "bossnet").symlink_to(target, target_is_directory=True)
    source = chunks if form == "chunks" else save_pt(seeded_state_dict(BOSSNET_KEYS, seed=5), tmp_path / "b.pt")
    done = install(source, folder, manifests_dir=manifests)
    assert done.status == "published" and done.replaced == [folder / "bossnet"]
    installed = "bossnet" if form == "chunks" else "bossnet.pt"
    assert sorted(p.name for p in folder.iterdir()) == sorted([installed, "bossnet.install.json"])  # no stale link
    assert not (folder / installed).is_symlink()
    assert json.loads((folder / "bossnet.install.json").read_text())["sha256"] == done.sha256
    assert [p.read_bytes() for p in chunk_paths(target)] == [p.read_bytes() for p in chunk_paths(chunks)]


def test_a_reader_never_mixes_the_chunks_of_two_installs(tmp_path, published, monkeypatch):
    """An install while a worker reads the folder: the worker gets one install or the other, whole."""
    from workers.weights import formats

    _, _, manifests = published
    folder = tmp_path / "w"
    # Same shapes, so the same chunk sizes; large enough that the first chunk holds tensor data.
    old, new = ({k: torch.randn(4096, generator=torch.Generator().manual_seed(s)) for k in BOSSNET_KEYS}
                for s in (11, 12))
    install(save_chunks(old, tmp_path / "old"), folder, manifests_dir=manifests, allow_unpublished=True)
    newer = save_chunks(new, tmp_path / "new")
    opened = []

    def open_then_install(file, *args, **kwargs):
        fh = open(file, *args, **kwargs)
        opened.append(file)
        if len(opened) == 1:  # the reader has begun: a new install lands now
            opened.append(install(newer, folder, manifests_dir=manifests, allow_unpublished=True))
        return fh

    monkeypatch.setattr(formats, "open", open_then_install, raising=False)
    loaded = formats.load_state_dict(folder / "bossnet")
    assert loaded.sha256 == opened[1].sha256
    assert all(torch.equal(loaded.state_dict[k], new[k]) for k in BOSSNET_KEYS)


def test_two_names_for_one_chunk_fail_the_check_as_they_fail_the_load(tmp_path, published):
    """The check a worker makes at start and the load agree: a worker that passes one loads."""
    from workers.weights.formats import load_state_dict
    from workers.weights.inspection import inspect

    _, chunks, manifests = published
    (chunks / "model_chunk_01").write_bytes((chunks / "model_chunk_1").read_bytes())
    checked = inspect(chunks, parse_manifest(manifests / "bossnet.toml"))
    assert any("model_chunk_01 and model_chunk_1 are the same chunk" in p for p in checked.problems), checked.problems
    with pytest.raises(WeightsError, match="are the same chunk"):
        load_state_dict(chunks)

