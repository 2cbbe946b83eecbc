"""Ride history: ride records built from a class's per-second recording, personal records,
exports (FIT, TCX, JSON). See docs/history.md."""
