"""``pulseline up`` / ``edge`` raise their open-files limit: every rider is a socket, and a
soft limit of 1,024 would make an edge refuse connections past ~1,000 riders."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
from launch.cli import _raise_open_files_limit
_raise_open_files_limit()
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
"""


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True)
    soft, hard = (int(x) for x in out.stdout.split())
    assert soft > 256
    assert soft == (hard if hard >= 0 else 1 << 20)  # (RLIM_INFINITY is -1)
