"""How the two macro knobs map to concrete retrieval parameters.

Presets store both the knobs and the derived values (a snapshot), so a preset keeps meaning the same thing
if this mapping changes later. Experimental presets may override the derived values on purpose.
"""

from __future__ import annotations

from typing import Final

from canary.config.presets import DerivedParams

_EF_STEPS: Final = (64, 96, 128, 160, 192, 224, 256)
_RERANK_STEPS: Final = (2, 3, 4, 5, 6)


def _clamp(x: float, low: float, high: float) -> float:
    return max(low, min(high, x))


def _step(steps: tuple[int, ...], fraction: float) -> int:
    return steps[round((len(steps) - 1) * fraction)]


def derive_params(latency_guard: float, recall_bias: float) -> DerivedParams:
    """latency_guard trades candidate volume for speed; recall_bias buys recall with search breadth."""
    guard = _clamp(latency_guard, 0.0, 1.0)
    bias = _clamp(recall_bias, 0.0, 1.0)
    if guard < 0.33:
        batch_size = 256
    elif guard < 0.66:
        batch_size = 128
    else:
        batch_size = 64
    return DerivedParams(
        T=round(200 + 1000 * guard),  # exact-vs-HNSW switch-over point
        Ncand_max=round(1500 - 1000 * guard),  # stricter guard -> fewer candidates
        batch_size=batch_size,
        ef=_step(_EF_STEPS, bias),
        rerank_multiplier=_step(_RERANK_STEPS, bias),
    )
