"""The demo weights a spec of one of BossNet's sources names (torch loads only on the call)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoWeights:
    """A pipeline spec's ``demo_weights`` for the network of ``source`` (torch loads on the call).

    Called as ``DemoWeights(source)(cache_dir)``: the seeded demo weights' folder
    (:func:`workers.bossnet.weights.demo_weights_path`).
    """

    source: str

    def __call__(self, cache_dir):
        from workers.bossnet.weights import demo_weights_path

        return demo_weights_path(cache_dir, source=self.source)
