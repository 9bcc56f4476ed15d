import pytest
import torch

from workers.weights.formats import WeightsError, chunk_files, git_blob_id, load_state_dict, save_chunks, save_pt


def test_same_weights_same_sha_in_either_form(tmp_path):
    sd = {"a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b.bias": torch.ones(3)}
    folder = save_chunks(sd, tmp_path / "chunks")
    pt = save_pt(sd, tmp_path / "some-name.pt")
    save_pt(sd, tmp_path / "other-name.pt")
    a, b, c = (load_state_dict(p) for p in (folder, pt, tmp_path / "other-name.pt"))
    assert a.sha256 == b.sha256 == c.sha256
    assert torch.equal(a.state_dict["a.weight"], sd["a.weight"])
    assert len(chunk_files(folder)) == 10 and not a.demo


def test_missing_chunk_and_garbage_are_clear_errors(tmp_path):
    folder = save_chunks({"x": torch.zeros(100)}, tmp_path / "chunks")
    (folder / "model_chunk_4").unlink()
    with pytest.raises(WeightsError, match=r"missing chunk\(s\) \[4\]"):
        load_state_dict(folder)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="not a torch state dict"):
        load_state_dict(tmp_path / "junk.pt")
    with pytest.raises(WeightsError, match="no such weights file"):
        load_state_dict(tmp_path / "absent.pt")


def test_two_names_for_one_chunk_are_refused(tmp_path):
    folder = save_chunks({"x": torch.zeros(100)}, tmp_path / "chunks")
    (folder / "model_chunk_01").write_bytes((folder / "model_chunk_1").read_bytes())
    with pytest.raises(WeightsError, match="model_chunk_0?1 and model_chunk_0?1 are the same chunk"):
        load_state_dict(folder)


def test_git_blob_id_matches_git():
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
