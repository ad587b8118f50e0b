"""Fitting a notification into a vendor's payload size limit.

Only the body is ever shortened, at a character boundary, with an ellipsis; the
title and data are never cut silently. If the message does not fit even with an
empty body, the caller rejects it.
"""

from __future__ import annotations

from collections.abc import Callable

ELLIPSIS = "…"


class PayloadTooLarge(Exception):
    """The message exceeds the limit even with the body cut to nothing."""


def fit_body(build: Callable[[str], bytes], body: str, limit: int) -> tuple[bytes, bool]:
    """``build(body)`` if it fits in ``limit`` bytes, else with the longest body prefix + "…" that fits.

    Returns (payload, truncated). Binary search over the number of characters
    kept, so the cost is O(log n) encodings whatever the body's length.
    """
    payload = build(body)
    if len(payload) <= limit:
        return payload, False
    low, high = 0, len(body) - 1  # characters kept; the full body does not fit
    best: bytes | None = None
    while low <= high:
        middle = (low + high) // 2
        candidate = build(body[:middle].rstrip() + ELLIPSIS)
        if len(candidate) <= limit:
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    if best is None:
        raise PayloadTooLarge(f"does not fit in {limit} bytes even without a body")
    return best, True
