"""``--stages 30s:100,2m:100,20s:0``: a load that ramps linearly from stage to stage.

Each stage is ``DURATION:TARGET``: over ``DURATION`` the value moves in a straight line
from where the previous stage ended (0 before the first) to ``TARGET``. For virtual
users (closed loop) the value is how many users run; for ``-R`` (open loop) it is the
rate in requests/s, and request ``k`` is due when the integral of the rate reaches ``k``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ._config import parse_duration

_STAGE = re.compile(r"^\s*([^:\s]+)\s*:\s*(-?)(\d+(?:\.\d*)?|\.\d+)\s*$")


@dataclass(frozen=True)
class Stages:
    """A piecewise-linear profile: ``steps`` are ``(duration_s, target)`` pairs, starting from ``start``."""

    steps: tuple[tuple[float, float], ...]
    start: float = 0.0

    @classmethod
    def parse(cls, text: str, option: str = "--stages", whole: bool = False) -> Stages:
        """Parse ``"30s:100,2m:100,20s:0"``; ``whole``: targets are counts (users), not rates.
        A stage of ``0s`` jumps to its target at once.

        Raises:
            ValueError: a stage is malformed (the message names it and its position).
        """
        if not text.strip():
            raise ValueError(f"{option}: no stage given (example: 30s:100,2m:100,20s:0)")
        steps = []
        for position, part in enumerate(text.split(","), 1):
            match = _STAGE.match(part)
            if not match:
                raise ValueError(
                    f"{option}: stage {position} ({part.strip()!r}) is not DURATION:TARGET (example: 30s:100)"
                )
            try:
                duration = parse_duration(match.group(1))
            except ValueError:
                raise ValueError(
                    f"{option}: stage {position} ({part.strip()!r}) has no valid duration "
                    f"({match.group(1)!r}; examples: 30s, 2m, 500ms)"
                ) from None
            if duration < 0:
                raise ValueError(f"{option}: stage {position} ({part.strip()!r}) cannot last less than 0 s")
            if match.group(2):
                raise ValueError(f"{option}: stage {position} ({part.strip()!r}) has a negative target")
            target = float(match.group(3))
            if whole and not target.is_integer():
                raise ValueError(
                    f"{option}: stage {position} ({part.strip()!r}) asks for {target:g} users: a whole number"
                )
            steps.append((duration, target))
        profile = cls(tuple(steps))
        if profile.duration <= 0:
            raise ValueError(f"{option}: the stages last 0 s in all: nothing would run")
        if profile.peak <= 0:
            raise ValueError(f"{option}: every stage's target is 0: nothing would run")
        return profile

    @property
    def duration(self) -> float:
        return sum(d for d, _ in self.steps)

    @property
    def mean(self) -> float:
        """The profile's mean value over its duration (a rate's: requests due / duration)."""
        area = sum((v0 + v1) / 2 * d for _, d, v0, v1 in self.segments())
        return area / self.duration if self.duration > 0 else 0.0

    @property
    def peak(self) -> float:
        return max([self.start] + [target for _, target in self.steps])

    def segments(self) -> list[tuple[float, float, float, float]]:
        """``(t0, duration, from_value, to_value)`` for every stage."""
        out = []
        t, value = 0.0, self.start
        for duration, target in self.steps:
            out.append((t, duration, value, target))
            t += duration
            value = target
        return out

    def value_at(self, t: float) -> float:
        """The profile's value ``t`` seconds after the start (the last target after the end)."""
        value = self.start
        for t0, duration, v0, v1 in self.segments():
            if t < t0 + duration:
                return v0 + (v1 - v0) * max(0.0, t - t0) / duration
            value = v1
        return value

    def time_of_count(self, count: float) -> float | None:
        """When the integral of the profile (a rate) reaches ``count``; None if it never does."""
        done = 0.0
        for t0, duration, v0, v1 in self.segments():
            area = (v0 + v1) / 2 * duration
            if done + area > count:
                need = count - done
                slope = (v1 - v0) / duration
                if abs(slope) < 1e-12:
                    x = need / v0
                else:
                    disc = v0 * v0 + 2 * slope * need
                    x = (-v0 + math.sqrt(max(disc, 0.0))) / slope
                return t0 + min(max(x, 0.0), duration)
            done += area
        return None

    def describe(self) -> str:
        return ",".join(f"{d:g}s:{target:g}" for d, target in self.steps)
