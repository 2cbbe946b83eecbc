"""The exception tree of ``history``.

``HistoryError``
    ``RideNotFound``       no such ride for that rider (the edge answers 404)
    ``BadCursor``          a listing cursor that is not one the server gave (400)
"""

from __future__ import annotations


class HistoryError(Exception):
    """Root of every error raised by the history package."""


class RideNotFound(HistoryError, LookupError):
    def __init__(self, rider: str, ride: str) -> None:
        super().__init__(f"rider {rider!r} has no ride {ride!r}")
        self.rider = rider
        self.ride = ride


class BadCursor(HistoryError, ValueError):
    """A cursor that does not decode (the message says why)."""
