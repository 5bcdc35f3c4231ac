"""Times as PERSIST files hold them: UTC, ISO 8601 with a ``Z``, or a Unix time.

Shared by the slot metas (``slots/``) and pool.conf (``data/``), which never
import each other.
"""

from __future__ import annotations

from datetime import UTC, datetime


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime | None:
    """ISO 8601 as written by ``date -u +%Y-%m-%dT%H:%M:%SZ``, or a Unix time;
    in UTC. None for anything else, a time out of range included."""
    text = text.strip()
    try:
        if text.isascii() and text.isdigit():
            return datetime.fromtimestamp(int(text[:20]), UTC) if len(text) <= 12 else None
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):  # not a time, or year 0 / 10000
        return None
