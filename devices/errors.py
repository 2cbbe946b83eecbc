"""``DevicesError``: the root of every error the devices package raises (protocol, text,
GATT decoding, recordings, the spool, links, the bridge, the client's token provider).
Errors that are also about a bad value stay ``ValueError`` too."""

from __future__ import annotations


class DevicesError(Exception):
    """Root of the devices package's errors."""
