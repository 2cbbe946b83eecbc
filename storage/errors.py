"""The exception tree of ``storage``.

``StorageError``
    ``StaleInstance``     this instance was fenced off by a newer epoch (its write was refused)
    ``CheckpointError``   a checkpoint could not be decoded
    ``NotReplicated``     a checkpoint write reached fewer replicas than the Redis URL asks
"""

from __future__ import annotations


class StorageError(Exception):
    """Root of the storage package's errors."""


class StaleInstance(StorageError):
    def __init__(self, epoch: int, current: int | None) -> None:
        super().__init__(f"instance epoch {epoch} fenced off by epoch {current}")
        self.epoch = epoch
        self.current = current

    def __reduce__(self) -> tuple[type, tuple[int, int | None]]:  # crosses process boundaries (Ray)
        return (type(self), (self.epoch, self.current))


class CheckpointError(StorageError):
    pass


class NotReplicated(StorageError):
    """A write is on the primary but fewer than ``wanted`` replicas confirmed it in time
    (``wait_replicas`` in the Redis URL): not durable yet, so nothing is acknowledged on it."""

    def __init__(self, wanted: int, acked: int) -> None:
        super().__init__(f"write confirmed by {acked} of the {wanted} replicas asked for")
        self.wanted = wanted
        self.acked = acked

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return (type(self), (self.wanted, self.acked))
