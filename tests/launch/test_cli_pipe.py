"""A CLI command whose reader goes away (``pulseline status | head -3``) ends quietly, as
Unix tools do, instead of printing a BrokenPipeError traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_closed_pipe_ends_a_command_without_a_traceback(tmp_path: Path) -> None:
    from api.auth import dev_secret
    from cluster.settings import Settings

    dev_secret(Settings(data_dir=tmp_path))  # (what `pulseline up` leaves in its data dir)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes
    try:
        done = subprocess.run([sys.executable, "-m", "launch.cli", "token", "--kind", "operator", "--data-dir", str(tmp_path)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, cwd=tmp_path)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 141
