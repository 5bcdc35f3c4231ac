"""What every bench prints beside its figures: how busy the machine was, and
ratios in one form."""

from __future__ import annotations

import os
import statistics


def load() -> str:
    """The load average: on a shared machine, the figures' context."""
    one, five, fifteen = os.getloadavg()
    return (f"load average {one:.2f} {five:.2f} {fifteen:.2f} "
            f"on {len(os.sched_getaffinity(0))} cores")


def speed_line(name: str, reference: str, ours: list[float], theirs: list[float],
               target: float | None = None) -> str:
    """Times of ours against a reference's: the ratio is how much faster ours is
    (reference time / our time, medians): above 1 is faster."""
    ratio = statistics.median(theirs) / statistics.median(ours)
    wanted = f"  target >= {target}x{'' if ratio >= target else ': NOT MET'}" if target else ""
    return (f"{name} vs {reference}: {ratio:.2f}x  ({statistics.median(ours):.3f} s vs "
            f"{statistics.median(theirs):.3f} s){wanted}")


def cost_line(name: str, reference: str, ours: float, theirs: float, unit: str,
              target: float | None = None) -> str:
    """A cost of ours against a reference's (time, memory): ours / reference,
    above 1 costs more."""
    ratio = ours / theirs
    wanted = f"  target <= {target}x{'' if ratio <= target else ': NOT MET'}" if target else ""
    return (f"{name} vs {reference}: {ratio:.2f}x  ({ours:.2f} {unit} vs {theirs:.2f} {unit})"
            f"{wanted}")
