"""``ClusterError``: the root of the errors the cluster package raises (starting Redis,
a Redis Cluster or Sentinel group)."""

from __future__ import annotations


class ClusterError(Exception):
    """Root of the cluster package's errors."""
