"""BossNet as a specq pipeline: BOSS spectra in, result rows out, batched across spectra and draws.

One forward pass carries B spectra × (1 + draws) rows: each spectrum's noise-free input
followed by its Monte Carlo noise draws, all built on the model's device in one go by
:func:`workers.bossnet.preprocess.build_inputs`. Results come back to the host once per
batch.

Reproducibility: with a ``seed``, each spectrum's noise comes from its own generator seeded
by (seed, path, hdu, row), drawn on the CPU, so a spectrum's numbers do not depend on the
batch it came in, the batch size, or the device's random number generator.

Precision: the default ``"float32"`` is the published arithmetic. ``"tf32"`` and ``"bf16"``
are opt-in and change only the network forward (see :mod:`workers.bossnet.network`): the
noise draws, the preprocessing and the unnormalization stay float32, and every row
computed in a reduced precision carries it in its ``precision`` column.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from workers import row as result_row
from workers.bossnet.minimum import MINIMUM
from workers.bossnet.schema import BOSSNET_SCHEMA
from workers.bossnet.sources import SOURCES, Source
from workers.bossnet.spec import SPEC
from workers.schema import ResultSchema
from workers.pipeline import Options, Pipeline
from workers.spectrum import Spectrum
from workers.threads import side_by_side

log = logging.getLogger(__name__)

# Unnormalization (mean, std) in network output order [log g, log Teff, [Fe/H], v_r].
OUTPUT_MEAN = SOURCES["boss"].mean
OUTPUT_STD = SOURCES["boss"].std
# The result column of each network output (log Teff becomes teff = 10**logTeff).
_COLUMNS = {"logg": "logg", "logTeff": "teff", "FeH": "fe_h", "rv": "bn_v_r"}

CPU_BATCH_SPECTRA = 8  # 168 rows at 20 draws: measured best on a 2-core CPU (4 and 12 are slower)
GPU_BYTES_PER_ROW = 8 << 20  # generous: activations, FFT/cuDNN workspace, float64 interpolation
GPU_MAX_SPECTRA = 256


def convert_outputs(normalized_nominal: np.ndarray, normalized_draws: np.ndarray,
                    source: Source = SOURCES["boss"], schema: ResultSchema = BOSSNET_SCHEMA) -> dict[str, np.ndarray]:
    """Published fields and flags from normalized network outputs.

    Parameters
    ----------
    normalized_nominal : (B, K) array
        Network output for the noise-free spectra, in ``source``'s label order
        (BOSS: [log g, log Teff, [Fe/H], v_r]).
    normalized_draws : (B, D, K) array
        Network outputs for the D noise draws of each spectrum.
    source : Source
        Whose model made them: the labels and their normalisation.
    schema : ResultSchema
        The result the flags are computed by.

    Returns
    -------
    dict of (B,) arrays
        ``teff, e_teff, logg, e_logg, fe_h, e_fe_h, bn_v_r, e_bn_v_r`` (float64),
        ``result_flags`` (int64), ``flag_warn``, ``flag_bad`` (bool). Uncertainties are
        the standard deviation (n−1) over the draws; NaN with fewer than two draws.

    Notes
    -----
    Unnormalization runs in float32, as the reference did on the network's float32
    output; ``teff = 10**logTeff`` and ``e_teff = teff · std(logTeff) · ln 10`` in float64.
    """
    k = len(source.labels)
    nominal = np.asarray(normalized_nominal, dtype=np.float32)
    draws = np.asarray(normalized_draws, dtype=np.float32)
    if nominal.ndim != 2 or draws.ndim != 3 or draws.shape[0] != nominal.shape[0] or nominal.shape[1] != k:
        raise ValueError(f"expected (B, {k}) and (B, D, {k}) outputs, got {nominal.shape} and {draws.shape}")
    nominal = nominal * source.std + source.mean
    draws = draws * source.std + source.mean
    if draws.shape[1] >= 2:
        sd = draws.std(axis=1, ddof=1).astype(np.float64)
    else:
        sd = np.full(nominal.shape, np.nan)
    nominal = nominal.astype(np.float64)
    cols: dict[str, np.ndarray] = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for i, name in enumerate(source.label_names):
            column = _COLUMNS[name]
            if name == "logTeff":
                teff = 10.0 ** nominal[:, i]
                cols["teff"], cols["e_teff"] = teff, teff * sd[:, i] * math.log(10.0)
            else:
                cols[column], cols[f"e_{column}"] = nominal[:, i], sd[:, i]
    cols = {f.name: cols[f.name] for f in schema.fields}  # the schema's column order
    flags = schema.compute_flags(cols)
    warn, bad = schema.summary(flags)
    return {**cols, "result_flags": flags, "flag_warn": warn, "flag_bad": bad}


def rows_from_columns(cols: Mapping[str, np.ndarray], schema: ResultSchema = BOSSNET_SCHEMA) -> list[dict[str, Any]]:
    """One row (:func:`workers.row.values`) per spectrum from :func:`convert_outputs`' columns."""
    return [result_row.values(schema, {k: v[i] for k, v in cols.items()})
            for i in range(len(cols["result_flags"]))]


def spectrum_arrays(spectrum: Spectrum) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """(wavelength float32, flux float32, ivar float32) of a usable spectrum, else why not.

    A spectrum BossNet cannot process becomes a failed row instead of failing its batch:
    missing or mismatched arrays, non-increasing or non-finite wavelengths, no pixel in
    3800–8900 Å, no finite flux at all.
    """
    wl = np.asarray(spectrum.wavelength, dtype=np.float64).ravel()
    flux = np.asarray(spectrum.flux).ravel()
    ivar = spectrum.ivar
    if ivar is None and spectrum.error is not None:
        err = np.asarray(spectrum.error, dtype=np.float64).ravel()
        with np.errstate(divide="ignore", invalid="ignore"):
            ivar = np.where(err > 0, 1.0 / err**2, 0.0)
    if ivar is None:
        return "no inverse variance (ivar) for the flux"
    ivar = np.asarray(ivar).ravel()
    if not (len(wl) == len(flux) == len(ivar)) or len(flux) == 0:
        return f"wavelength, flux and ivar lengths differ or are empty ({len(wl)}, {len(flux)}, {len(ivar)})"
    wl32 = wl.astype(np.float32)  # the reference interpolates on float32 wavelengths
    if not np.isfinite(wl32).all() or (len(wl32) > 1 and not (np.diff(wl32) > 0).all()):
        return "wavelengths are not finite and strictly increasing"
    if wl32[-1] < 3800.0 or wl32[0] > 8900.0:
        return f"no wavelength overlap with 3800-8900 A (spectrum covers {wl[0]:.0f}-{wl[-1]:.0f} A)"
    if not np.isfinite(flux).any():
        return "no finite flux value"
    return wl32, flux.astype(np.float32), ivar.astype(np.float32)


def noise_seed(seed: int, spectrum: Spectrum) -> int:
    """A 63-bit seed from (seed, path, hdu, row): a spectrum's draws depend on nothing else."""
    key = f"bossnet\x1f{int(seed)}\x1f{spectrum.path}\x1f{int(spectrum.hdu)}\x1f{int(spectrum.row)}"
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[:8], "little") & (2**63 - 1)


def draw_noise(spectra: Sequence[Spectrum], lengths: Sequence[int], draws: int, seed: int | None):
    """Standard normals ``(B, draws, max(lengths))`` float32 on the CPU, zero-padded.

    With ``seed`` each spectrum has its own generator (:func:`noise_seed`); without, one
    freshly seeded generator serves the batch.
    """
    import torch

    n = max(lengths, default=0)
    # Filled through numpy: torch would copy each spectrum's draws with its thread team,
    # a barrier per spectrum for a copy that takes microseconds.
    z = np.zeros((len(spectra), draws, n), dtype=np.float32)
    if draws == 0:
        return torch.from_numpy(z)
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    for i, (spectrum, k) in enumerate(zip(spectra, lengths)):
        if seed is not None:
            gen.manual_seed(noise_seed(seed, spectrum))
        z[i, :, :k] = torch.randn((draws, k), generator=gen, dtype=torch.float32).numpy()
    return torch.from_numpy(z)


@dataclass
class _Prepared:
    """A batch made ready for the device (:meth:`BossNetPipeline.prepare`)."""

    rows: list  # a failed row for each spectrum refused, None for the others
    todo: list  # (index, spectrum, arrays) of the spectra to compute
    options: Options
    first: tuple | None  # network_inputs of the first device batch of todo


class BossNetPipeline(Pipeline):
    """BossNet on BOSS spectra (see ``shared/spec/bossnet.md``).

    Parameters
    ----------
    weights : path-like, optional
        Ten-chunk folder or ``.pt`` file, published or demo.
    device : str, optional
        None → CUDA when available, else the CPU.
    draws, seed, precision : optional
        Default :class:`~workers.pipeline.Options` (20 draws, fresh noise, float32). The
        precision is one of ``"float32"`` (the published arithmetic), ``"tf32"`` (changes
        nothing on a CPU: TF32 is a CUDA tensor-core format) and ``"bf16"``;
        reduced-precision rows carry it (see :meth:`effective_precision`).
    batch_size : int, optional
        Spectra per forward pass (each brings 1 + draws rows). None → the class's
        ``cpu_batch_spectra`` on a CPU (8 for BOSS's network), from free memory on CUDA.
    conv_impl : {"auto", "fft", "direct"}, optional
        Convolution way (see :class:`~workers.bossnet.network.BossNet`); None → "auto".

    Raises
    ------
    ValueError
        An unknown ``precision`` or ``conv_impl``, or negative ``draws``.
    """

    spec = SPEC
    source = "boss"  # whose model: its network shape and label statistics (workers.bossnet.sources)
    cpu_batch_spectra = CPU_BATCH_SPECTRA  # spectra per forward pass on a CPU
    inputs_side_by_side = True  # network_inputs of a batch's spectra may run in groups (batch_inputs)
    # On a CPU too, the engine prepares the next batch (noise, inputs) while the network runs
    # this one: worth it only where the network's small tensors leave the cores gaps to fill
    # (Gaia RVS); level for BOSS's network, 1-2 % slower for XP's.
    prepares_ahead_on_cpu = False

    def __init__(self, weights=None, device: str | None = None, draws: int | None = None,
                 seed: int | None = None, batch_size: int | None = None, conv_impl: str | None = None,
                 precision: str | None = None):
        # The options are checked before the 290 MB of weights are loaded.
        super().__init__(weights, device, draws, seed, batch_size, precision)
        import torch

        from workers.bossnet.weights import default_device, load_bossnet
        from workers.bossnet.preprocess import GRID

        self.device = torch.device(device) if device is not None else default_device()
        self.model, loaded = load_bossnet(self.required_weights(weights), self.device, conv_impl=conv_impl or "auto",
                                          source=self.source)
        self.source_facts = SOURCES[self.source]
        self.model_sha256 = loaded.sha256
        self.demo = loaded.demo
        self.unexpected_keys = list(loaded.unexpected)
        self.weights_source = loaded.source
        self.conv_impl = self.model.resolved_conv_impl(self.device)
        self._grid = torch.from_numpy(GRID).to(self.device)
        self.batch_size = int(batch_size) if batch_size else self._default_batch_size()
        if self.demo:
            log.warning("BossNet is running on demo weights (%s): results are not science", loaded.source)

    def effective_precision(self, precision: str | None = None) -> str:
        """The arithmetic actually used for ``precision`` (default: this instance's): ``"tf32"`` off CUDA is ``"float32"``."""
        precision = precision or self.defaults.precision
        if precision == "tf32" and self.device.type != "cuda":
            return "float32"
        return precision

    def _default_batch_size(self) -> int:
        import torch

        if self.device.type != "cuda":
            return self.cpu_batch_spectra
        free, _ = torch.cuda.mem_get_info(self.device)
        per_spectrum = (1 + self.defaults.draws) * GPU_BYTES_PER_ROW
        return max(1, min(GPU_MAX_SPECTRA, int(0.5 * free // per_spectrum)))

    @property
    def prepares_ahead(self) -> bool:
        """On CUDA, and on a CPU where the class says so (:attr:`prepares_ahead_on_cpu`), the
        engine prepares the next batch (checks, noise, copies) while this one runs."""
        return self.device.type == "cuda" or self.prepares_ahead_on_cpu

    def _predict(self, spectra: list[Spectrum], options: Options) -> list[dict[str, Any]]:
        """One row per spectrum, in order; a spectrum that cannot be processed gets a failed row.

        Out of device memory propagates: the engine's one policy splits the batch.
        """
        return self._finish(self._prepare(spectra, options))

    def _prepare(self, spectra: list[Spectrum], options: Options) -> _Prepared:
        """The checks of every spectrum and the network input of the first device batch."""
        if (options.precision == "tf32" and self.effective_precision(options.precision) != "tf32"
                and not getattr(self, "_said_no_tf32", False)):
            # Asked for and not given: said once where a user sees it, not once a batch.
            self._said_no_tf32 = True
            log.warning("BossNet precision tf32 on %s is plain float32: TF32 exists only on CUDA tensor cores",
                        self.device)
        rows: list[dict[str, Any] | None] = [None] * len(spectra)
        todo: list[tuple[int, Spectrum, tuple]] = []
        for i, spectrum in enumerate(spectra):
            checked = self.refuse_reason(spectrum) or self.usable_arrays(spectrum)
            if not isinstance(checked, str) and self.source == "boss":  # below the least data BossNet answers for
                checked = MINIMUM.shortfall(checked[0], checked[1]) or checked
            if isinstance(checked, str):
                rows[i] = self.failed_row(checked)
            else:
                todo.append((i, spectrum, checked))
        first = None
        if todo:
            import torch

            chunk = todo[:self.batch_size]
            with torch.inference_mode():
                first = self.batch_inputs([s for _, s, _ in chunk], [a for _, _, a in chunk], options)
        return _Prepared(rows, todo, options, first)

    def _finish(self, prepared: _Prepared) -> list[dict[str, Any]]:
        """The network on every device batch (the first one's input is ready), then the rows."""
        rows, todo = prepared.rows, prepared.todo
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            inputs = prepared.first if start == 0 else None
            results = self._predict_batch([s for _, s, _ in chunk], [a for _, _, a in chunk], prepared.options,
                                          inputs)
            for (i, _, _), row in zip(chunk, results):
                rows[i] = row
        return rows  # type: ignore[return-value]

    def usable_arrays(self, spectrum: Spectrum) -> tuple | str:
        """The arrays :meth:`network_inputs` takes from ``spectrum``, or why it cannot be used."""
        return spectrum_arrays(spectrum)

    def batch_inputs(self, spectra: Sequence[Spectrum], arrays: Sequence[tuple], options: Options):
        """:meth:`network_inputs` of a device batch: on a CPU with several torch threads, groups of its spectra side by side.

        Each group's many small operations then run on one core each
        (:func:`workers.threads.one_thread_workers`), with no OpenMP barrier between two of
        them. A spectrum's input depends on no other spectrum of its batch (its noise on its
        own seed), so the groups give the batch's numbers.
        """
        import torch

        groups = min(torch.get_num_threads(), len(spectra)) if self.device.type == "cpu" else 1
        if groups <= 1 or not self.inputs_side_by_side:
            return self.network_inputs(spectra, arrays, options)
        bounds = [len(spectra) * g // groups for g in range(groups + 1)]
        parts = side_by_side(lambda g: self.network_inputs(spectra[bounds[g]:bounds[g + 1]],
                                                           arrays[bounds[g]:bounds[g + 1]], options), range(groups))
        return torch.cat([x for x, _ in parts]), torch.cat([ok for _, ok in parts])

    def network_inputs(self, spectra: Sequence[Spectrum], arrays: Sequence[tuple], options: Options):
        """``(x, ok)``: the network input ``(B, 1 + draws, L)`` (row 0 noise-free) and which spectra had usable draws.

        BOSS and LAMOST: interpolated onto the 3,900-point grid and log-scaled, draws included.
        """
        from workers.bossnet.preprocess import build_inputs, pad_spectra

        wls, fluxes, ivars = zip(*arrays)
        padded = pad_spectra(wls, fluxes, ivars, self.device)
        z = draw_noise(spectra, [len(f) for f in fluxes], options.draws, options.seed)
        if self.device.type == "cuda":  # pinned: the copy overlaps the host's work
            z = z.pin_memory()
        x, ok, _ = build_inputs(padded, z.to(self.device, non_blocking=True), self._grid)
        return x, ok

    def _predict_batch(self, spectra: Sequence[Spectrum], arrays: Sequence[tuple], options: Options,
                       inputs: tuple | None = None) -> list[dict[str, Any]]:
        """The rows of one device batch; ``inputs``: its :meth:`network_inputs` when already made."""
        import torch

        with torch.inference_mode():
            x, ok = inputs if inputs is not None else self.batch_inputs(spectra, arrays, options)
            b, d1, g = x.shape
            # Only this forward sees the precision: x and the noise above are float32.
            out = self.model(x.reshape(b * d1, 1, g), precision=options.precision).reshape(b, d1, -1)
            out_np = out.cpu().numpy()  # the batch's one trip back to the host
            ok_np = ok.cpu().numpy()
        cols = convert_outputs(out_np[:, 0], out_np[:, 1:], self.source_facts, self.schema)
        rows = rows_from_columns(cols, self.schema)
        effective = self.effective_precision(options.precision)
        if effective != "float32":  # float32 rows stay as they were: no precision means float32
            for row in rows:
                row["precision"] = effective
        return [row if good else self.failed_row("no usable pixels in the noise draws (no finite flux error)")
                for row, good in zip(rows, ok_np)]
