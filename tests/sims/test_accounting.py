"""The accounting can fail: a lost, a duplicated, an unacknowledged and a wrongly rejected
sample each show up, on crafted ground truth against crafted server states."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sims.accounting import ParticipantTruth, account, server_rows


def _truth(**kw: Any) -> list[ParticipantTruth]:
    base = dict(session="s", participant="alice", sent=10, invalid=1, told_rejected=Counter(out_of_range=1),
                unacked=0, energy_kj=1.5)
    base.update(kw)
    return [ParticipantTruth(**base), ParticipantTruth("s", "bob", sent=5, energy_kj=0.5)]


def _server(alice: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    row = {"samples": 9, "rejected": 1, "energy_kj": 1.5}
    row.update(alice)
    return {("s", "alice"): row, ("s", "bob"): {"samples": 5, "rejected": 0, "energy_kj": 0.5}}


def test_exact_run_is_clean() -> None:
    result = account(_truth(), _server({}))
    assert (result["lost"], result["duplicated"], result["rejected_unexpected"]) == (0, 0, 0)
    assert (result["sent"], result["applied"], result["rejected"], result["acknowledged"]) == (15, 14, 1, 14)
    assert result["rejected_by_reason"] == {"out_of_range": 1}
    assert result["participants_mismatched"] == 0


def test_a_lost_sample_is_caught() -> None:
    result = account(_truth(), _server({"samples": 8}))
    assert result["lost"] == 1 and result["lost_detail"]["missing_on_server"] == 1
    assert result["duplicated"] == 0 and result["participants_mismatched"] == 1
    alice = next(r for r in result["participants"] if r["participant"] == "alice")
    assert (alice["truth_applied"], alice["server_applied"], alice["missing"]) == (9, 8, 1)


def test_a_duplicated_sample_is_caught() -> None:
    result = account(_truth(), _server({"samples": 10}))
    assert result["duplicated"] == 1 and result["lost"] == 0
    assert result["participants_mismatched"] == 1


def test_an_unacknowledged_sample_counts_as_lost() -> None:
    result = account(_truth(unacked=1), _server({}))
    assert result["lost"] == 1 and result["lost_detail"]["not_acknowledged"] == 1
    assert result["acknowledged"] == 13


def test_a_participant_the_server_never_saw_is_all_lost() -> None:
    result = account(_truth(), {("s", "bob"): {"samples": 5, "rejected": 0, "energy_kj": 0.5}})
    assert result["lost"] == 9


def test_rejecting_a_valid_sample_is_caught_and_energy_is_compared() -> None:
    result = account(_truth(invalid=0, told_rejected=Counter()), _server({"samples": 9, "rejected": 1}))
    assert result["lost"] == 1 and result["rejected_unexpected"] == 1
    result = account(_truth(), _server({"energy_kj": 1.6}))
    assert abs(result["energy_max_abs_error_kj"] - 0.1) < 1e-9 and result["participants_mismatched"] == 1


def test_server_rows_reads_session_snapshots() -> None:
    rows = server_rows({"s1": {"participants": [{"participant": "a", "samples": 3}]}, "s2": {"participants": []}})
    assert rows == {("s1", "a"): {"participant": "a", "samples": 3}}


def test_a_rejection_notice_lost_with_its_connection_is_counted_apart() -> None:
    # the server rejected the invalid sample (its own count says 1), the device never heard
    result = account(_truth(told_rejected=Counter()), _server({}))
    assert (result["rejected_unexpected"], result["participants_mismatched"], result["lost"]) == (0, 0, 0)
    assert (result["rejected"], result["rejections_unreported"], result["acknowledged"]) == (1, 1, 14)
    assert result["rejected_by_reason"] == {}
    # but an invalid sample the server did not reject is still caught
    result = account(_truth(told_rejected=Counter()), _server({"samples": 10, "rejected": 0}))
    assert result["rejections_unreported"] == 0 and result["rejected_unexpected"] == 2
    assert result["duplicated"] == 1 and result["participants_mismatched"] == 1
