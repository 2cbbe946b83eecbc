"""Multi-node scenarios run in their own process (a process holds one Ray connection).

Each module has a ``main()`` that builds its own cluster, runs, prints one JSON line
prefixed ``RESULT `` on stdout and cleans up everything it started, by pid.
"""
