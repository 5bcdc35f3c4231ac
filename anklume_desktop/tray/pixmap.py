"""The tray icon drawn, for hosts without (or without our) icon theme: a
filled disc in the look's colour, as SNI's ``a(iiay)`` wants it (ARGB32,
network byte order). An update's disc is a pie: the part done in the look's
colour, clockwise from the top, the rest in another."""

from __future__ import annotations

import math

SIZES = (16, 22, 32, 48)
ARGB = tuple[int, int, int, int]


def disc(size: int, argb: ARGB, done: float = 1.0, rest: ARGB = (0, 0, 0, 0)) -> bytes:
    centre, radius = (size - 1) / 2, size / 2 - 1
    inside, remaining, outside = bytes(argb), bytes(rest), bytes(4)

    def pixel(x: int, y: int) -> bytes:
        if (x - centre) ** 2 + (y - centre) ** 2 > radius**2:
            return outside
        # The angle from twelve o'clock, clockwise, as a fraction of a turn.
        turn = (math.atan2(x - centre, centre - y) / (2 * math.pi)) % 1.0
        return inside if turn < done else remaining

    return b"".join(pixel(x, y) for y in range(size) for x in range(size))


def icon(argb: ARGB, done: float = 1.0, rest: ARGB = (0, 0, 0, 0)) -> list[list[object]]:
    """Every size, the host picks: ``[[width, height, pixels], ...]``."""
    return [[size, size, disc(size, argb, done, rest)] for size in SIZES]
