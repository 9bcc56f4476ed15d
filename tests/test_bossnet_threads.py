"""BossNet on a CPU with several torch threads: passes and input groups side by side give one thread's numbers."""
from __future__ import annotations

import contextlib

import torch

from conftest import bossnet_vector_spectra
from specq.testing.formula_weights import formula_state_dict
from workers.bossnet.network import BossNet
from workers.bossnet.pipeline import BossNetPipeline
from workers.bossnet.sources import SOURCES
from workers.weights.formats import save_chunks


@contextlib.contextmanager
def torch_threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def test_passes_side_by_side_give_the_rows_of_one_thread():
    torch.manual_seed(5)
    model = BossNet(**SOURCES["gaia_rvs"].model_args, conv_impl="fft")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    x = torch.randn(101, 1, 2401)  # passes of unequal rows
    with torch.inference_mode():
        with torch_threads(2):
            side_by_side = model._pooled_fft(x)
        with torch_threads(1):
            one_thread = model._pooled_fft(x)
    assert torch.equal(side_by_side, one_thread)


def test_input_groups_give_the_batch_inputs(tmp_path):
    with torch.device("meta"):
        model = BossNet()
    pipe = BossNetPipeline(weights=save_chunks(formula_state_dict(model), tmp_path), device="cpu", draws=4, seed=3)
    spectra = bossnet_vector_spectra(["clean", "gaps", "negative_flux", "partial_coverage"])
    arrays = [pipe.usable_arrays(s) for s in spectra]
    options = pipe.options(seed=3)
    with torch.inference_mode(), torch_threads(2):
        grouped = pipe.batch_inputs(spectra, arrays, options)
        whole = pipe.network_inputs(spectra, arrays, options)
    assert torch.equal(grouped[0], whole[0]) and torch.equal(grouped[1], whole[1])

