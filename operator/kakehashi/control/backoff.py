"""Capped, jittered exponential backoff, as client-go's workqueue rate limiter does it."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 300.0
    # Full jitter within +-jitter of the delay: many objects failing on the same outage must
    # not come back in lockstep and knock the recovering server over again.
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before retry number `attempt` (1 for the first retry)."""
        raw = min(self.cap_s, self.base_s * self.factor ** max(0, attempt - 1))
        spread = raw * self.jitter
        return max(0.0, raw + (rng or random).uniform(-spread, spread))
