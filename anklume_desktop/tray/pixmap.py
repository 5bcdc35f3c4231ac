"""The tray icon drawn, for hosts without (or without our) icon theme: a
filled disc in the look's colour, as SNI's ``a(iiay)`` wants it (ARGB32,
network byte order)."""

from __future__ import annotations

SIZES = (16, 22, 32, 48)


def disc(size: int, argb: tuple[int, int, int, int]) -> bytes:
    centre, radius = (size - 1) / 2, size / 2 - 1
    inside, outside = bytes(argb), bytes(4)
    return b"".join(
        inside if (x - centre) ** 2 + (y - centre) ** 2 <= radius**2 else outside
        for y in range(size) for x in range(size))


def icon(argb: tuple[int, int, int, int]) -> list[list[object]]:
    """Every size, the host picks: ``[[width, height, pixels], ...]``."""
    return [[size, size, disc(size, argb)] for size in SIZES]
