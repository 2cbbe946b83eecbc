"""Durable state in Redis, shared by every stateful package: the Redis URL and its client
factory (one server, a Redis Cluster or a Sentinel-managed master: ``redis_url``), and the
epoch-fenced checkpoint store (``checkpoint``), with their errors (``errors``). It imports
nothing of ours: session actors (``actors``) and leaderboard shards (``leaderboards``) both
stand on it without standing on each other."""
