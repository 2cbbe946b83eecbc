"""Where processes start: the ``pulseline`` CLI (``up``, ``edge``, ``demo``, ``swarm``,
``bench``, ``token``, ``status``, ``bridge``), the stack it brings up (``launch/stack.py``)
and the benchmarks that start one (``launch/capacity.py``: ``make bench``; ``launch/bench.py``:
``pulseline bench``). The top of the layout: it may import every other package, and none
imports it (docs/architecture.md)."""
