"""The data sources the BossNet network family is trained for: each one's network shape and label statistics.

The network's authors (hutchresearch/BOSSNet) publish one trained model per source, each
with its ``model_args.yaml`` (the network's shape) and ``stats/<source>.yaml`` (each label's
normalisation ``MEAN``/``STD`` and the post-normalisation limits ``PNMIN``/``PNMAX`` of the
training set). Those facts are declared here once; :class:`~workers.bossnet.network.BossNet`
is built from :attr:`Source.model_args`, the outputs are unnormalised with
:attr:`Source.labels`.

LAMOST DR7 and DR8 spectra go through the BOSS model and its statistics (the authors
publish no LAMOST statistics of their own).

Imports nothing heavy: producers and schemas read this module.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Label", "Source", "SOURCES", "source"]


@dataclass(frozen=True)
class Label:
    """One network output: its normalisation and its training range after normalisation.

    Attributes
    ----------
    name : str
        ``"logg"``, ``"logTeff"``, ``"FeH"`` or ``"rv"`` (the authors' names).
    mean, std : float
        ``value = output · std + mean``.
    pn_min, pn_max : float
        The training set's smallest and largest normalised value.
    """

    name: str
    mean: float
    std: float
    pn_min: float
    pn_max: float


@dataclass(frozen=True)
class Source:
    """One source's model: network shape, outputs, input rule and noise rule.

    Attributes
    ----------
    name : str
        The authors' data-source name (``boss``, ``apogee``, ``gaia_rvs``, ``gaia_xp``).
    model_folder : str
        The published ten-chunk folder (``model_boss`` …).
    model_args : dict
        Keyword arguments of :class:`~workers.bossnet.network.BossNet`, as ``model_args.yaml``.
    labels : tuple of Label
        Outputs in network order.
    scaling : {"interpolate", "log", "none"}
        ``interpolate``: onto 3,900 points from 3,800 to 8,900 Å, then log-scaled (BOSS,
        LAMOST); ``log``: log-scaled as given, NaN and ±inf set to 0 first (APOGEE);
        ``none``: to the network as given, NaN set to 1 (Gaia).
    noise : {"gaussian", "cholesky"}
        Monte Carlo draws: ``flux + error · z`` per pixel, or ``L · z`` with ``L`` the
        Cholesky factor of each block's covariance (Gaia XP: BP and RP drawn separately).
    input_length : int or None
        Pixels the network takes, where the source has a fixed grid.
    """

    name: str
    model_folder: str
    model_args: dict
    labels: tuple[Label, ...]
    scaling: str
    noise: str = "gaussian"
    input_length: int | None = None

    @property
    def mean(self) -> np.ndarray:
        """Label means in network order (float32, as the outputs)."""
        return np.array([lab.mean for lab in self.labels], dtype=np.float32)

    @property
    def std(self) -> np.ndarray:
        """Label standard deviations in network order (float32)."""
        return np.array([lab.std for lab in self.labels], dtype=np.float32)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(lab.name for lab in self.labels)


def _args(model_dim=4, dim_mults=(1, 2, 4, 8, 16), num_targets=3, num_linear=6, linear_dim=1024) -> dict:
    return dict(in_channels=1, model_dim=model_dim, dim_mults=tuple(dim_mults), kernel_size=30,
                num_targets=num_targets, adapt_pool_output_dim=1024, num_linear=num_linear,
                linear_dim=linear_dim, pos_enc=True)


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("boss", "model_boss", _args(num_targets=4), (
        Label("logg", 3.9, 0.9, -4.403565883333333, 6.584444444444444),
        Label("logTeff", 3.8, 0.1, -6.324908332532, 12.000000000000002),
        Label("FeH", -0.4, 0.5, -7.496200000000001, 4.4496842),
        Label("rv", -7.4, 60.9, -9.116415791127874, 9.074319773706897),
    ), scaling="interpolate"),
    Source("apogee", "model_apogee", _args(), (
        Label("logg", 3.2, 1.2, -3.2758333384990697, 3.3389749999999996),
        Label("logTeff", 3.7, 0.1, -5.2989908487604165, 9.387230328989702),
        Label("FeH", -0.2, 0.3, -8.926531221275827, 4.568167),
    ), scaling="log", input_length=8575),
    Source("gaia_rvs", "model_gaia_rvs", _args(model_dim=8, dim_mults=(1, 1, 1, 1), num_linear=5), (
        Label("logg", 3.4, 1.0, -3.6770452499389648, 4.431402778625488),
        Label("logTeff", 3.7, 0.1, -2.9253287315368715, 7.216303825378416),
        Label("FeH", -0.2, 0.3, -8.44794527689616, 6.28403369585673),
    ), scaling="none", input_length=2401),
    Source("gaia_xp", "model_gaia_xp", _args(dim_mults=(1, 1, 1), num_linear=7, linear_dim=4096), (
        Label("logg", 3.94, 0.842, -5.198329691211401, 6.328379524575279),
        Label("logTeff", 3.722, 0.092, -4.82124239130435, 13.164666714875596),
        Label("FeH", -0.349, 0.39, -11.052914096147585, 5.649279689788819),
    ), scaling="none", noise="cholesky", input_length=110),
)}


def source(name: str) -> Source:
    """The source ``name``.

    Raises
    ------
    ValueError
        No such source; the message lists the known ones.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown BossNet source {name!r}; choose from {', '.join(SOURCES)}")
    return SOURCES[name]
