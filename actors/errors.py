"""The exception tree of ``actors``.

``ActorError``
    ``PhaseError``        an illegal phase transition (carries both phases)
    ``StaleInstance``     this actor instance was fenced off by a newer epoch
    ``CheckpointError``   a checkpoint could not be decoded
    ``NotReplicated``     a checkpoint write reached fewer replicas than the Redis URL asks
"""

from __future__ import annotations


class ActorError(Exception):
    """Root of every error raised by session and leaderboard logic."""


class PhaseError(ActorError):
    def __init__(self, current: str, requested: str) -> None:
        super().__init__(f"cannot go from phase {current!r} to {requested!r}")
        self.current = current
        self.requested = requested

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # crosses process boundaries (Ray)
        return (type(self), (self.current, self.requested))


class StaleInstance(ActorError):
    def __init__(self, epoch: int, current: int | None) -> None:
        super().__init__(f"instance epoch {epoch} fenced off by epoch {current}")
        self.epoch = epoch
        self.current = current

    def __reduce__(self) -> tuple[type, tuple[int, int | None]]:
        return (type(self), (self.epoch, self.current))


class CheckpointError(ActorError):
    pass


class NotReplicated(ActorError):
    """A write is on the primary but fewer than ``wanted`` replicas confirmed it in time
    (``wait_replicas`` in the Redis URL): not durable yet, so nothing is acknowledged on it."""

    def __init__(self, wanted: int, acked: int) -> None:
        super().__init__(f"write confirmed by {acked} of the {wanted} replicas asked for")
        self.wanted = wanted
        self.acked = acked

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return (type(self), (self.wanted, self.acked))
