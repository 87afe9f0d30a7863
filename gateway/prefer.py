"""`Prefer: wait=N` (RFC 7240, as Replicate's and Azure's APIs take it): the same as `?wait=N`."""

from __future__ import annotations

import re

from gateway.errors import field_error

WAIT = re.compile(r"^\s*wait\s*=\s*\"?([^\";,\s]*)\"?\s*$", re.IGNORECASE)


def prefer_wait(header: str | None) -> float | None:
    """The `wait` preference of a Prefer header in seconds, None without one; 422 naming the header for a
    wait that is not a number of seconds."""
    if not header:
        return None
    for preference in header.split(","):
        match = WAIT.match(preference.split(";", 1)[0])
        if match is None:
            continue  # other preferences (respond-async, return=...) are not ours to refuse
        try:
            seconds = float(match.group(1))
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= 600:
            raise field_error(
                ["header", "Prefer"], f"wait must be seconds from 0 to 600, got {match.group(1)!r}"
            )
        return seconds
    return None
