"""BossNet's weights: loading them into the network, and the seeded demo weights.

Loading (:func:`load_bossnet`) reports unexpected keys by name instead of dropping them
silently as the published loaders do, fails with the name of a missing learned tensor,
and fills the fixed buffers (``pos_enc.inv_freq``, ``num_batches_tracked``) when absent.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import uuid
from pathlib import Path

import torch
from torch import nn

from workers.bossnet.network import BossNet, first_block
from workers.bossnet.sources import source as source_named
from workers.weights.formats import DEMO_MARKER, N_CHUNKS, LoadedWeights, WeightsError, chunk_files, load_state_dict, save_chunks

log = logging.getLogger(__name__)

DEMO_SEED = 20240101
DEMO_FOLDER = "bossnet-demo"


def demo_folder(source: str = "boss") -> str:
    """The demo weights' folder name for ``source`` (``bossnet-demo``, ``bossnet-apogee-demo`` …)."""
    return DEMO_FOLDER if source == "boss" else f"bossnet-{source}-demo"


def is_fixed_buffer(key: str) -> bool:
    """True for state-dict entries that are not learned and may be absent from a file."""
    return key == "pos_enc.inv_freq" or key.endswith("num_batches_tracked")


def fit_state_dict(model: nn.Module, state_dict: dict) -> tuple[dict, list[str]]:
    """Check a state dict against ``model``: (the dict to load strictly, unexpected keys).

    Raises
    ------
    WeightsError
        A learned tensor is missing (all missing names are listed) or has the wrong shape.
    """
    expected = model.state_dict()
    unexpected = sorted(k for k in state_dict if k not in expected)
    missing = [k for k in expected if k not in state_dict and not is_fixed_buffer(k)]
    if missing:
        raise WeightsError(f"BossNet weights lack {len(missing)} tensor(s): {', '.join(missing)}")
    fitted = {}
    for key, ref in expected.items():
        if key not in state_dict:
            fitted[key] = _fixed_buffer_value(key, ref)
            continue
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"BossNet weights: {key} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(ref.shape):
            raise WeightsError(f"BossNet weights: {key} has shape {tuple(value.shape)}, "
                               f"the network needs {tuple(ref.shape)}")
        fitted[key] = value.to(ref.dtype)
    return fitted, unexpected


def _fixed_buffer_value(key: str, ref: torch.Tensor) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.zeros(ref.shape, dtype=ref.dtype)
    return torch.ones(ref.shape, dtype=ref.dtype)  # pos_enc.inv_freq: one channel → frequency 1


def load_bossnet(path: str | os.PathLike, device: str | torch.device | None = None,
                 conv_impl: str = "auto", source: str = "boss") -> tuple[BossNet, LoadedWeights]:
    """Build BossNet and load weights from a ten-chunk folder or a ``.pt`` file.

    Parameters
    ----------
    path : path-like
        Weights (folder of ``model_chunk_*`` or a single file): the published ones, or the
        seeded demo weights of :func:`demo_weights_path`.
    device : str or torch.device, optional
        Where the model lives; None → CUDA when available, else the CPU.
    conv_impl : {"auto", "fft", "direct"}
        See :class:`BossNet`.
    source : str
        Whose model it is (:data:`workers.bossnet.sources.SOURCES`): the network's shape.

    Returns
    -------
    model : BossNet
        In eval mode, on ``device``.
    loaded : LoadedWeights
        Source, sha256, demo marker and ``unexpected`` keys (reported, ignored).
    """
    args = source_named(source).model_args
    loaded = load_state_dict(path)
    with torch.device("meta"):  # no random initialisation of 72.6M parameters to overwrite
        model = BossNet(**args, conv_impl=conv_impl)
    fitted, unexpected = fit_state_dict(model, loaded.state_dict)
    if unexpected:
        log.warning("BossNet weights %s: ignoring %d unexpected key(s): %s",
                    loaded.source, len(unexpected), ", ".join(unexpected))
    if not loaded.demo and _demo_first_kernel(source).equal(fitted["first_conv.conv_layer.weight"]):
        # specq's own seeded weights without their marker file (copied by hand): still demo weights.
        log.warning("BossNet weights %s are specq's demo weights (their %s file is missing): labelled demo",
                    loaded.source, DEMO_MARKER)
        loaded.demo = True
    model.load_state_dict({k: v.contiguous() for k, v in fitted.items()}, strict=True, assign=True)
    loaded.unexpected = unexpected
    loaded.state_dict = {}  # the model holds the tensors; don't keep a second copy alive
    device = torch.device(device) if device is not None else default_device()
    return model.to(device).eval(), loaded


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def demo_state_dict(seed: int = DEMO_SEED, source: str = "boss") -> dict:
    """Seeded random weights of ``source``'s network (torch's default initialisation), without touching the global RNG."""
    args = source_named(source).model_args
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BossNet(**args)
    return model.state_dict()


@functools.lru_cache(maxsize=None)
def _demo_first_kernel(source: str) -> torch.Tensor:
    """The first convolution's kernel in ``source``'s demo weights, made alone.

    It is the first tensor the seeded initialisation draws (the positional channel draws
    nothing), so it tells demo weights apart without making all 72.6 M parameters.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        block = first_block(**source_named(source).model_args)
    return block.conv_layer.weight.detach()


def demo_weights_path(cache_dir: str | os.PathLike, source: str = "boss") -> Path:
    """The demo weights' chunk folder of ``source``, written once into ``<weights cache>/<demo_folder(source)>/``.

    Safe when several processes race: each writes a private temporary folder and renames
    it into place; a loser finds the winner's folder and uses it.
    """
    cache_dir = Path(cache_dir).expanduser()
    name = demo_folder(source)
    final = cache_dir / name
    if _complete(final):
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        save_chunks(demo_state_dict(source=source), tmp, demo=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final):  # neither ours nor a complete one from a racing process
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote BossNet (%s) demo weights to %s", source, final)
    return final


def _complete(folder: Path) -> bool:
    if not (folder / DEMO_MARKER).exists():
        return False
    try:
        return len(chunk_files(folder)) == N_CHUNKS
    except (WeightsError, OSError):
        return False
