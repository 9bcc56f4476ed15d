"""The astroNN distance network (``ApogeeDistBCNN``) in PyTorch, with Monte Carlo dropout.

The module is state-dict compatible, key for key, with the published PyTorch port of the
astroNN DR17 distance network (``astroNN_dist_model_parameter.pt``, a ``torch.save``d
``{"model_state_dict": ...}``).

Monte Carlo dropout is *folded into the batch*: :meth:`ApogeeDistBCNN.mc_forward` runs all
passes of all spectra as rows of one tensor, each row with its own dropout masks, instead
of looping over passes in Python. Each spectrum draws its masks from its own
:class:`torch.Generator`, so its result depends on its seed only, never on which other
spectra share the batch.

Importing this module imports torch but never astroNN or TensorFlow.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.weights import LoadedWeights, WeightsError, load_state_dict, save_pt

N_PIXELS = 7514  # continuum-normalized APOGEE spectrum with the detector gaps removed
KERNEL = 8
POOL = 4
DROPOUT = 0.3
STATE_KEY = "model_state_dict"
DEMO_FILENAME = "astronn_dist-demo.pt"
DEMO_SEED = 20180131  # fixed: every host builds byte-identical demo weights

# Dropout masks come from uniform signed 16-bit words: keep a unit when w < _KEEP_BELOW.
# P(keep) = 45875 / 65536 = 0.699997, a drop rate within 3e-6 of 0.3.
_KEEP_BELOW = -32768 + round((1.0 - DROPOUT) * 65536)
# Pass rows per step of the MC forward (~210 kB of activations a row). On a CPU small
# blocks that stay in cache beat big ones (measured: 100 rows ~2x faster than 800); a GPU
# wants big ones.
_ROWS_PER_CHUNK = {"cpu": 128, "cuda": 4096}


def _same_pad(x: torch.Tensor) -> torch.Tensor:
    # Keras "same" padding for an even kernel puts the extra zero at the end: 3 before, 4 after.
    return F.pad(x, ((KERNEL - 1) // 2, KERNEL // 2))


class ApogeeDistBCNN(nn.Module):
    """Bayesian CNN predicting astroNN's ``fakemag`` (Ks luminosity) from an APOGEE spectrum.

    Parameters
    ----------
    n_pixels : int
        Input length (7514 for the published network).
    dropout : float
        Dropout rate, active at inference for Monte Carlo dropout.

    Notes
    -----
    Input ``x`` is the continuum-normalized flux minus ``input_mean`` (see :meth:`standardize`).
    Outputs are the prediction ``softplus(dense_output)`` (multiply by ``labels_std`` for
    fakemag) and the log variance ``dense_var`` (in the same scaled units).
    """

    def __init__(self, n_pixels: int = N_PIXELS, dropout: float = DROPOUT):
        super().__init__()
        self.n_pixels = n_pixels
        self.dropout = dropout
        self.n_pooled = n_pixels // POOL
        self.n_flat = 4 * self.n_pooled
        self.register_buffer("input_mean", torch.zeros(n_pixels, dtype=torch.float64))
        self.register_buffer("labels_std", torch.ones(1, dtype=torch.float64))
        self.conv1 = nn.Conv1d(1, 2, KERNEL)
        self.conv2 = nn.Conv1d(2, 4, KERNEL)
        self.dense_1 = nn.Linear(self.n_flat, 192)
        self.dense_2 = nn.Linear(192, 64)
        self.dense_output = nn.Linear(64, 1)
        self.dense_var = nn.Linear(64, 1)

    # -- sizes of the three dropout sites, in mask order ---------------------------
    @property
    def mask_sizes(self) -> tuple[int, int, int]:
        """Units masked per pass at each dropout site: after conv1, after flatten, after dense_1."""
        return (2 * self.n_pixels, self.n_flat, self.dense_1.out_features)

    def standardize(self, norm_flux: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalized flux (B, 7514) → network input ``norm_flux − input_mean`` as float32.

        The subtraction is done in float64, as the published ``input_mean`` is float64.
        """
        flux = torch.as_tensor(np.asarray(norm_flux, dtype=np.float64))
        flux = flux.to(self.input_mean.device)
        return (flux - self.input_mean).to(torch.float32)

    def _head(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.softplus(self.dense_output(h))[:, 0], self.dense_var(h)[:, 0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over ``x`` (B, 7514); dropout is on in ``train()`` mode, off in ``eval()``.

        Returns
        -------
        prediction, log_variance : Tensor
            Shape (B,) each, in units of ``labels_std``.
        """
        p, train = self.dropout, self.training
        h = F.relu(self.conv1(_same_pad(x[:, None, :])))
        h = F.dropout(h, p, train)
        h = F.relu(self.conv2(_same_pad(h)))
        h = F.max_pool1d(h, POOL)
        h = h.transpose(1, 2).reshape(h.shape[0], -1)  # channels last, as Keras flattens
        h = F.dropout(h, p, train)
        h = F.dropout(F.relu(self.dense_1(h)), p, train)
        h = F.relu(self.dense_2(h))
        return self._head(h)

    @torch.no_grad()
    def mc_forward(self, x: torch.Tensor, passes: int, generators: Sequence[torch.Generator],
                   rows_per_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Monte Carlo dropout: ``passes`` dropout passes per spectrum, folded into the batch.

        Parameters
        ----------
        x : Tensor
            Standardized input, shape (B, 7514), on the model's device.
        passes : int
            Dropout passes per spectrum.
        generators : sequence of torch.Generator
            One per spectrum, on the model's device. Spectrum ``b`` draws all of its masks
            from ``generators[b]``, pass after pass, so its result depends on that
            generator only, not on the other spectra of the batch.
        rows_per_chunk : int, optional
            Pass rows per step (memory and cache); None → 128 on a CPU, 4096 on a GPU.

        Returns
        -------
        prediction, log_variance : Tensor
            Shape (B, passes) each, float32, on the CPU.

        Notes
        -----
        Same arithmetic as :meth:`forward` in ``train()`` mode, arranged for speed:

        * conv1 sees the same input in every pass, so it runs once per spectrum and its
          output is broadcast over the passes while the first mask is applied, straight
          into the zero-padded, channels-last input buffer of conv2;
        * conv2 runs channels-last, whose output order is the published flatten order;
        * masks are 0/1 float32 made by one comparison of random words (a float multiply
          is several times faster on a CPU than ``torch.where`` or a bool multiply);
        * ReLU after conv2 is applied after the max-pool (they commute), on 4x fewer values;
        * inverted dropout's 1/(1-p) is folded into the weights that read each masked tensor.

        On a CPU the random stream of a generator does not depend on how it is sliced, so
        results do not depend on ``rows_per_chunk`` either; on CUDA they may.
        """
        if len(generators) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} spectra but {len(generators)} generators")
        if passes < 1:
            raise ValueError(f"need at least one pass, got {passes}")
        n_spectra, n = x.shape[0], self.n_pixels
        if rows_per_chunk is None:
            rows_per_chunk = _ROWS_PER_CHUNK.get(x.device.type, _ROWS_PER_CHUNK["cuda"])
        scale = 1.0 / (1.0 - self.dropout)
        w2 = (self.conv2.weight * scale)[:, :, None, :].contiguous(memory_format=torch.channels_last)
        w_d1 = self.dense_1.weight * scale
        w_d2 = self.dense_2.weight * scale
        # conv1 once per spectrum, kept channels-last: (B, N, 2)
        h1 = F.relu(self.conv1(_same_pad(x[:, None, :]))).transpose(1, 2).contiguous()
        lead, tail = (KERNEL - 1) // 2, KERNEL // 2
        s1_end, s2_end = self.mask_sizes[0], self.mask_sizes[0] + self.mask_sizes[1]
        pred = torch.empty(n_spectra, passes, device=x.device)
        logvar = torch.empty(n_spectra, passes, device=x.device)

        # Steps: whole groups of spectra when a spectrum's passes fit in one step, else one
        # spectrum at a time in slices of passes.
        group = max(1, rows_per_chunk // passes)
        for s0 in range(0, n_spectra, group):
            s1 = min(s0 + group, n_spectra)
            n_s = s1 - s0
            step = passes if n_s > 1 else rows_per_chunk
            for p0 in range(0, passes, step):
                p1 = min(p0 + step, passes)
                n_p = p1 - p0
                rows = n_s * n_p
                keep = self._masks(generators[s0:s1], n_p)  # (S, n_p, units per pass)
                # conv2 input, channels-last and zero-padded: (rows, 3 + N + 4, 2)
                h = torch.empty(rows, lead + n + tail, 2, device=x.device)
                h[:, :lead] = 0.0
                h[:, lead + n:] = 0.0
                torch.mul(h1[s0:s1, None], keep[..., :s1_end].view(n_s, n_p, n, 2),
                          out=h[:, lead:lead + n].view(n_s, n_p, n, 2))
                # (rows, 1, L, 2) seen as NCHW (rows, 2, 1, L) is channels-last memory, the
                # layout oneDNN convolves ~2x faster than (rows, 2, L) for these few channels.
                h = F.conv2d(h.view(rows, 1, -1, 2).permute(0, 3, 1, 2), w2, self.conv2.bias)
                # Output memory is (rows, N, 4): pool 4 positions per channel with three
                # maxima of strided views; the result is already the channels-last flatten.
                h = h.permute(0, 2, 3, 1).reshape(rows, n, 4)[:, : self.n_pooled * POOL]
                h = h.reshape(rows, self.n_pooled, POOL, 4)
                h = torch.maximum(torch.maximum(h[:, :, 0], h[:, :, 1]),
                                  torch.maximum(h[:, :, 2], h[:, :, 3]))
                h = F.relu(h).reshape(rows, self.n_flat)
                h = h * keep[..., s1_end:s2_end].reshape(rows, -1)
                h = F.relu(F.linear(h, w_d1, self.dense_1.bias))
                h = h * keep[..., s2_end:].reshape(rows, -1)
                h = F.relu(F.linear(h, w_d2, self.dense_2.bias))
                p, v = self._head(h)
                pred[s0:s1, p0:p1] = p.view(n_s, n_p)
                logvar[s0:s1, p0:p1] = v.view(n_s, n_p)
        return pred.float().cpu(), logvar.float().cpu()

    def _masks(self, generators: Sequence[torch.Generator], passes: int) -> torch.Tensor:
        """0/1 float32 keep-masks for ``passes`` more passes of each spectrum.

        Random bits are drawn as full-range int64 (the cheapest draw torch offers) and read
        as uniform signed 16-bit words, four per draw; a unit is kept when its word is below
        ``-32768 + 0.7*65536``. Per pass, the words cover in order the conv1-site units
        (N x 2, position-major), the flatten-site units (7512, channels last) and the
        dense_1-site units (192).

        Returns
        -------
        Tensor
            (S, passes, 2N + 7512 + 192), on the generators' device.
        """
        device = generators[0].device
        per_pass = sum(self.mask_sizes)
        keep = torch.empty(len(generators), passes, per_pass, device=device)
        n_words = passes * per_pass
        for i, g in enumerate(generators):
            bits = torch.empty(-(-n_words // 4), dtype=torch.int64, device=device)
            # from = int64 min and no upper bound: all 64 bits uniform (plain random_()
            # leaves the sign bit at zero).
            bits.random_(-(2**63), None, generator=g)
            torch.lt(bits.view(torch.int16)[:n_words].view(passes, per_pass), _KEEP_BELOW, out=keep[i])
        return keep


def spectrum_seed(seed: int, *identity) -> int:
    """A 63-bit generator seed from a base seed and a spectrum's identity (path, hdu, row).

    A hash, so that neighbouring rows get unrelated streams and the seed of a spectrum
    never depends on its position in a batch.
    """
    text = "\x1f".join(str(v) for v in (int(seed), *identity))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def make_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One :class:`torch.Generator` per seed, on ``device`` (where the masks are drawn)."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


# -- weights ----------------------------------------------------------------------------

def check_state_dict(model: nn.Module, state_dict: dict) -> list[str]:
    """Check a state dict against ``model``; return the unexpected keys (to be ignored).

    Raises
    ------
    WeightsError
        Naming every missing key, or every key whose shape does not fit.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise WeightsError(f"astronn_dist weights lack key(s): {', '.join(missing)}")
    bad = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
           for k, v in expected.items() if tuple(state_dict[k].shape) != tuple(v.shape)]
    if bad:
        raise WeightsError(f"astronn_dist weights do not fit the network: {'; '.join(bad)}")
    return [k for k in state_dict if k not in expected]


def load_astronn_dist(path: str | os.PathLike | None = None,
                      device: str | torch.device | None = None) -> tuple[ApogeeDistBCNN, LoadedWeights]:
    """Build the network and load weights into it.

    Parameters
    ----------
    path : path-like, optional
        The published ``.pt`` (a dict holding ``"model_state_dict"``). None → the seeded
        demo weights (:func:`demo_weights_path`).
    device : str or torch.device, optional
        None → CUDA when available, else CPU.

    Returns
    -------
    model : ApogeeDistBCNN
        In ``eval()`` mode, on ``device``; buffer dtypes kept (float64 ``input_mean``).
    loaded : LoadedWeights
        sha256, source, demo marker and the unexpected (ignored) keys.
    """
    if path is None:
        path = demo_weights_path()
    loaded = load_state_dict(path, state_key=STATE_KEY)
    model = ApogeeDistBCNN()
    loaded.unexpected = check_state_dict(model, loaded.state_dict)
    wanted = {k: v for k, v in loaded.state_dict.items() if k not in loaded.unexpected}
    model.load_state_dict(wanted, strict=True)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), loaded


def demo_state_dict(seed: int = DEMO_SEED) -> dict:
    """Seeded random weights shaped like the published ones, with plausible outputs.

    Weights are scaled 1/sqrt(fan_in) so dropout moves the prediction by ~1–2%; the output
    bias puts ``softplus(pred)·labels_std`` near fakemag ≈ 48 (M_Ks ≈ −1.6, a red-clump
    giant, APOGEE's most common star) and the log-variance bias gives a ~5% predictive
    error. Not a trained model: for demos and tests only.
    """
    g = torch.Generator().manual_seed(seed)
    model = ApogeeDistBCNN()
    sd = {}
    for key, value in model.state_dict().items():
        if key == "input_mean":
            sd[key] = 0.95 + 0.02 * torch.randn(value.shape, generator=g, dtype=torch.float64)
        elif key == "labels_std":
            sd[key] = torch.tensor([300.0], dtype=torch.float64)  # the published scale is a few hundred
        elif key.endswith(".bias"):
            sd[key] = torch.zeros(value.shape)
        else:
            fan_in = int(np.prod(value.shape[1:]))
            sd[key] = torch.randn(value.shape, generator=g) / fan_in**0.5
    # softplus(-1.75)·300 ≈ 48; sqrt(exp(-9.7))·300 ≈ 2.4 ≈ 5% of 48.
    sd["dense_output.bias"] = torch.tensor([-1.75])
    sd["dense_var.bias"] = torch.tensor([-9.7])
    return sd


def demo_weights_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the demo ``.pt``; written once (atomically, marked demo) when absent.

    Parameters
    ----------
    cache_dir : path-like, optional
        None → ``load_settings().weights_cache``.
    """
    if cache_dir is None:
        from tasks.settings import load_settings

        cache_dir = load_settings().weights_cache
    path = Path(cache_dir).expanduser() / DEMO_FILENAME
    if not path.exists():
        # save_pt writes to a temporary file and renames it: concurrent workers never
        # see a half-written file, and all of them write identical bytes.
        save_pt({STATE_KEY: demo_state_dict()}, path, demo=True)
    marker = path.with_name(path.name + ".demo")
    if not marker.exists():  # a concurrent writer may have renamed but not yet marked it
        marker.write_text("seeded random weights, not a trained model\n")
    return path
