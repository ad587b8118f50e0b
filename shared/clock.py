"""The one clock pushq reads: timezone-aware UTC, so every stored and compared time is comparable.

Its own module (not the models') so code that only needs the time imports no schema.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, as an aware UTC datetime (the database columns refuse naive ones)."""
    return datetime.now(UTC)
