"""The exception tree of ``actors``.

``ActorError``
    ``PhaseError``        an illegal phase transition (carries both phases)

A session's checkpoint errors are the storage package's (``storage.errors``:
``StaleInstance``, ``CheckpointError``, ``NotReplicated``), re-exported here.
"""

from __future__ import annotations

from storage.errors import CheckpointError, NotReplicated, StaleInstance

__all__ = ["ActorError", "CheckpointError", "NotReplicated", "PhaseError", "StaleInstance"]


class ActorError(Exception):
    """Root of every error raised by session logic."""


class PhaseError(ActorError):
    def __init__(self, current: str, requested: str) -> None:
        super().__init__(f"cannot go from phase {current!r} to {requested!r}")
        self.current = current
        self.requested = requested

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # crosses process boundaries (Ray)
        return (type(self), (self.current, self.requested))
