"""BossNet's convolutions in the frequency domain: the ``fft`` way of :class:`~workers.bossnet.network.BossNet`.

The kernel-30 convolutions of the residual blocks become products in the frequency domain
(``rfft`` → one batched complex matmul over frequencies → ``irfft``), with the
inference-mode BatchNorm folded into the convolution. The first convolution (two input
channels) goes through the frequency domain on its flux channel only (one product per
frequency, no matmul), with the positional channel's contribution and the folded bias
computed once per input length. A :class:`FFTPlan` holds all of it for one input length,
device and dtype; the network caches it until its weights change.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``bn(x) = x·scale + shift`` in inference mode (float64)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bn.bias.double() - bn.running_mean.double() * scale


# Relative cost per sample of one radix pass, from rfft+irfft timings with MKL: radix 3
# and 5 passes cost about 2 and 3 radix-2 passes (MKL pairs factors of 2 into radix-4/8).
_RADIX_COST = {2: 1.0, 3: 1.9, 5: 2.9}


def _fft_cost(n: int) -> float | None:
    """Estimated transform cost of length ``n`` (``n`` × its radix passes), None unless 5-smooth."""
    passes, m = 0.0, n
    for p, cost in _RADIX_COST.items():
        while m % p == 0:
            m //= p
            passes += cost
    return n * passes if m == 1 else None


def _fft_size(n_min: int) -> int:
    """The 5-smooth length ≥ ``n_min`` with the cheapest transforms.

    Not always the smallest: 1250 = 2·5⁴ costs ~1.4x the transforms of 1280 = 2⁸·5.
    """
    n_min = max(n_min, 1)
    costs = {n: c for n in range(n_min, 2 * n_min + 1) if (c := _fft_cost(n)) is not None}
    return min(costs, key=lambda n: (costs[n], n))


@dataclass
class _SpectralConv:
    """One convolution with its BatchNorm folded in, prepared for the frequency domain.

    Works on zero-padded buffers ``(B, C, n_fft)``: the input's samples beyond its length
    must be zero; the output's samples beyond ``out_len`` are wrap-around garbage.
    """

    n_fft: int
    out_len: int
    weight: torch.Tensor  # (F, C_in, C_out) complex: spectrum of the flipped, shifted kernel
    dc: torch.Tensor  # (C_out,) complex: the BN shift, added to the zero-frequency bin (×n_fft)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft(x, n=self.n_fft)  # (B, C_in, F)
        # bmm on a permuted view falls back to one small gemm per frequency: transpose first.
        prod = torch.bmm(_rotated(spec, 2), self.weight)  # (F, B, C_out)
        prod[0] += self.dc  # a constant shift lives in the DC bin: saves a pass over the output
        # The inverse transform runs on contiguous rows: transforms along the outer
        # (frequency-major) axis take MKL's strided path, ~6x slower on an Intel Xeon and
        # level at best on AMD cores.
        return torch.fft.irfft(_rotated(prod, 1), n=self.n_fft)


# torch copies a plain 2-D transpose with a cache-blocked kernel, ~1.5x faster than the
# generic copy of a permuted 3-D view once the tensor outgrows the caches (slower before).
_BLOCKED_TRANSPOSE_MIN = 1 << 20


def _rotated(t: torch.Tensor, lead: int) -> torch.Tensor:
    """``t`` with its first ``lead`` axes moved after the others, contiguous: with ``lead=2``
    (B, C, F) → (F, B, C), with ``lead=1`` (F, B, C) → (B, C, F)."""
    first, rest = t.shape[:lead], t.shape[lead:]
    if t.numel() < _BLOCKED_TRANSPOSE_MIN:
        return t.permute(*range(lead, t.dim()), *range(lead)).contiguous()
    return t.reshape(first.numel(), rest.numel()).t().contiguous().reshape(*rest, *first)


def _spectral_conv(weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                   padding: int, in_len: int, n_fft: int, dtype: torch.dtype) -> _SpectralConv:
    """Frequency-domain form of ``bn(conv1d(x, weight, padding))`` for inputs of ``in_len``.

    ``y[t] = Σ_k w[k]·x[t+k−p]`` is the circular convolution of x with the kernel
    ``g[(p−k) mod N] = w[k]``; no wrap-around reaches the outputs kept when
    ``N ≥ in_len + p`` (negative indices land on the zero tail of x).
    """
    spec, out_len = _kernel_spectrum(weight.double() * scale[:, None, None], padding, in_len, n_fft)
    cdtype = _complex_dtype(dtype)
    return _SpectralConv(n_fft, out_len, spec.permute(2, 1, 0).contiguous().to(cdtype),
                         (shift * n_fft).to(cdtype))


def _kernel_spectrum(weight: torch.Tensor, padding: int, in_len: int, n_fft: int) -> tuple[torch.Tensor, int]:
    """Spectrum ``(C_out, C_in, n_fft//2+1)`` (float64 → complex128) of ``conv1d(·, weight, padding)``'s kernel, and the output length."""
    c_out, c_in, k = weight.shape
    out_len = in_len + 2 * padding - k + 1
    if n_fft < max(in_len + padding, k, out_len):
        raise ValueError(f"n_fft {n_fft} too short for length {in_len}, kernel {k}, padding {padding}")
    g = torch.zeros(c_out, c_in, n_fft, dtype=torch.float64, device=weight.device)
    g[:, :, (padding - torch.arange(k, device=weight.device)) % n_fft] = weight
    return torch.fft.rfft(g, n=n_fft), out_len


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex64 if dtype == torch.float32 else torch.complex128


@dataclass
class FFTPlan:
    """Everything the ``fft`` forward needs for one input length, device and dtype."""

    key: tuple
    first_spectrum: torch.Tensor  # (in_channels, C, F1) complex: folded first kernels on the flux channel(s)
    first_const: torch.Tensor  # (1, C, L+1): positional channel's contribution + folded bias
    first_n_fft: int  # the first convolution's transform length
    n_fft: int  # one transform length for every residual convolution
    length: int  # the residual blocks' sequence length
    blocks: list[tuple[_SpectralConv, _SpectralConv, int, int]]  # conv1, conv2, offset, c_in

    @property
    def row_bytes(self) -> int:
        """Bytes of one row's widest activation buffer ``(C, n_fft)``."""
        channels = max([self.first_const.shape[1]] + [conv1.weight.shape[-1] for conv1, _, _, _ in self.blocks])
        return channels * max(self.n_fft, self.length) * self.first_const.element_size()


def build_plan(model, key: tuple, length: int, dtype: torch.dtype) -> FFTPlan:
    """The ``fft`` way's plan for :class:`~workers.bossnet.network.BossNet` ``model``, inputs of ``length``.

    ``key`` identifies the plan (length, device, dtype, weights version) for the model's cache.
    """
    fc = model.first_conv
    scale, shift = _bn_affine(fc.bn)
    w = fc.conv_layer.weight.double() * scale[:, None, None]
    bias = fc.conv_layer.bias.double() * scale + shift
    n_flux = w.shape[1] - (1 if model.pos_enc is not None else 0)
    if model.pos_enc is not None:
        pos = model.pos_enc(length, torch.float64)
        const = F.conv1d(pos[None, None], w[:, n_flux:], padding=fc.padding)
    else:
        const = torch.zeros(1, w.shape[0], length + 2 * fc.padding - w.shape[-1] + 1,
                            dtype=torch.float64, device=w.device)
    const = const + bias[None, :, None]
    # The first convolution in the frequency domain too: oneDNN's direct kernel runs at a
    # fraction of its rate with one input channel.
    first_len = length + 2 * fc.padding - w.shape[-1] + 1
    first_n_fft = _fft_size(max(length + fc.padding, w.shape[-1], first_len))
    first_spectrum, _ = _kernel_spectrum(w[:, :n_flux], fc.padding, length, first_n_fft)
    blocks = []
    in_len = (length + 2 * fc.padding - w.shape[-1] + 1) // 2
    k = w.shape[-1]
    # The smallest 5-smooth length that every residual convolution fits without wrap-around.
    n_fft = _fft_size(max(max(in_len + b.padding1, in_len + 2 * b.padding1 - k + 1 + b.padding2, k)
                          for b in model.res_blocks)) if len(model.res_blocks) else 0
    for block in model.res_blocks:
        s1, b1 = _bn_affine(block.bn1)
        s2, b2 = _bn_affine(block.bn2)
        conv1 = _spectral_conv(block.conv1.weight, s1, b1, block.padding1, in_len, n_fft, dtype)
        conv2 = _spectral_conv(block.conv2.weight, s2, b2, block.padding2, conv1.out_len, n_fft, dtype)
        if conv2.out_len != in_len:
            raise ValueError("residual block changes the length; the fft way needs it kept")
        blocks.append((conv1, conv2, block.channel_offset, block.in_channels))
    return FFTPlan(key, first_spectrum.transpose(0, 1).contiguous().to(_complex_dtype(dtype)),
                   const.to(dtype), first_n_fft, n_fft, in_len, blocks)


def residual_features(plan: FFTPlan, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The residual blocks' output for ``x`` in its zero-padded buffer ``(B, C, n_fft)``, and its length."""
    spec = torch.fft.rfft(x, n=plan.first_n_fft)  # (B, in_channels, F1)
    prod = spec[:, 0, None] * plan.first_spectrum[0]
    for channel in range(1, spec.shape[1]):
        prod += spec[:, channel, None] * plan.first_spectrum[channel]
    out = torch.fft.irfft(prod, n=plan.first_n_fft)[..., :plan.first_const.shape[-1]]
    out = F.max_pool1d(F.elu_(out.add_(plan.first_const)), 2)
    length = plan.length
    # Activations live in zero-padded (B, C, n_fft) buffers: no padding copy per transform.
    buf = out.new_zeros(out.shape[0], out.shape[1], plan.n_fft)
    buf[..., :length] = out
    for conv1, conv2, offset, c_in in plan.blocks:
        h = conv1(buf)
        F.elu_(h[..., :conv1.out_len])
        h[..., conv1.out_len:] = 0
        h = conv2(h)
        h[:, offset:offset + c_in, :length] += buf[..., :length]  # shortcut, channel-padded
        F.elu_(h[..., :length])
        h[..., length:] = 0
        buf = h
    return buf, length
