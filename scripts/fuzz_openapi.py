"""The OpenAPI fuzz of the edge on a bigger budget than the test suite's.

    .venv/bin/python scripts/fuzz_openapi.py --scale 25

runs ``tests/api/test_fuzz_openapi.py`` (its own redis-server, local Ray and uvicorn, as
in the suite) with every example budget multiplied by ``--scale`` (the suite runs scale 1:
8 examples per operation as operator, 3 anonymously, 6 hostile bodies per JSON-body
operation). Exit status is pytest's: 0 when no request got a 5xx.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=25, help="multiply every example budget by this")
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PULSELINE_FUZZ_SCALE": str(args.scale)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=7200",
           "tests/api/test_fuzz_openapi.py"]
    return subprocess.call(cmd, cwd=root, env=env)


if __name__ == "__main__":
    sys.exit(main())
