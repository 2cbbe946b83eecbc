"""The bridge's commands explain a missing radio in one line and a non-zero exit (issue 17)."""

from __future__ import annotations

from typing import Any

import pytest

from devices.bridge_cli import main
from devices.links import BleakLink, ScanFailed, explain_scan_error


@pytest.mark.parametrize(("error", "hint"), [
    (FileNotFoundError(2, "No such file or directory"), "no D-Bus system bus"),
    (RuntimeError("[org.freedesktop.DBus.Error.ServiceUnknown] The name org.bluez was not provided"), "BlueZ is not running"),
    (RuntimeError("[org.bluez.Error.NotReady] Resource Not Ready"), "adapter is off"),
    (RuntimeError("No Bluetooth adapters found."), "no Bluetooth adapter"),
    (RuntimeError("[org.freedesktop.DBus.Error.AccessDenied] Rejected send message"), "no permission"),
])
def test_scan_errors_say_what_to_do(error: BaseException, hint: str) -> None:
    line = explain_scan_error(error)
    assert line.index(hint) < line.index(type(error).__name__) and "\n" not in line


def test_an_unknown_error_is_passed_on_as_it_is() -> None:
    assert explain_scan_error(ValueError("odd")) == "ValueError: odd"


def _radio_works() -> bool:
    import asyncio

    try:
        asyncio.run(BleakLink().scan([], 0.2))
    except ScanFailed:
        return False
    return True


@pytest.mark.skipif(_radio_works(), reason="this machine has a working Bluetooth radio")
@pytest.mark.parametrize("argv", [["scan", "--timeout-s", "0.5"],
                                  ["run", "--url", "http://127.0.0.1:9", "--session", "s", "--all-of", "heart_rate"]])
def test_no_radio_is_one_line_and_exit_2(argv: list[str], capsys: Any) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pulseline bridge: scan failed: ") and "\n" not in err and "Traceback" not in err
