"""Exact accounting: what the swarm knows it sent (ground truth) against what the server holds.

``ParticipantTruth`` is one participant's ground truth, summed over its devices: samples
generated, how many were made invalid on purpose (and so must be rejected), what the
server said it rejected, what is still unacknowledged, and the energy the server must
have integrated. ``account(truths, server)`` compares it with the server's per
participant totals (``samples``, ``rejected``, ``energy_kj`` from
``GET /v1/sessions/{id}``) and returns the report's accounting block:

* ``lost`` = samples the truth says must be applied that the server does not have
  (``lost_detail.missing_on_server``) + samples never durably acknowledged
  (``lost_detail.not_acknowledged``). Must be 0.
* ``duplicated`` = samples the server counted beyond the truth. Must be 0.
* ``rejected_unexpected`` = rejections of samples that were valid, plus invalid samples
  the server did not reject. Must be 0.
* ``rejections_unreported`` = invalid samples the server rejected (its own count says so)
  whose rejection notice the device never received: an ``error`` frame in flight when a
  connection dropped is lost, and the next ``welcome``'s durable cursor covers the rejected
  seq, so the device drops it as done (docs/protocol.md). Counted as rejected, not as an
  error; informational.
* ``participants``: one row per participant, truth next to the server's numbers.

Pure functions over plain data: tests feed it crafted truth and server states.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ParticipantTruth", "account", "server_rows"]


@dataclass
class ParticipantTruth:
    session: str
    participant: str
    sent: int = 0  # distinct seqs generated, over all this participant's devices
    invalid: int = 0  # made invalid on purpose: the server must reject exactly these
    told_rejected: Counter[str] = field(default_factory=Counter)  # what the server said, by reason
    unacked: int = 0  # still not durably acknowledged at the end
    energy_kj: float = 0.0

    @property
    def valid(self) -> int:
        return self.sent - self.invalid


def _compare(truth: ParticipantTruth, row: Mapping[str, Any]) -> dict[str, Any]:
    applied = int(row.get("samples", 0))
    rejected = int(row.get("rejected", 0))
    energy = float(row.get("energy_kj", 0.0))
    told = sum(truth.told_rejected.values())
    # the server rejected exactly the invalid samples, but some notices never arrived
    unreported = truth.invalid - told if rejected == truth.invalid and told < truth.invalid else 0
    return {
        "session": truth.session,
        "participant": truth.participant,
        "sent": truth.sent,
        "truth_applied": truth.valid,
        "server_applied": applied,
        "truth_rejected": truth.invalid,
        "told_rejected": told,
        "rejections_unreported": unreported,
        "server_rejected": rejected,
        "unacked": truth.unacked,
        "truth_energy_kj": round(truth.energy_kj, 6),
        "server_energy_kj": round(energy, 6),
        "missing": max(0, truth.valid - applied),
        "extra": max(0, applied - truth.valid),
        "rejected_unexpected": abs(told + unreported - truth.invalid) + abs(rejected - truth.invalid),
        "energy_error_kj": abs(energy - truth.energy_kj),
    }


def account(truths: Iterable[ParticipantTruth], server: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict[str, Any]:
    """Compare ground truth with the server's rows, keyed by ``(session, participant)``."""
    truth_list = list(truths)
    rows = [_compare(t, server.get((t.session, t.participant), {})) for t in truth_list]
    by_reason: Counter[str] = Counter()
    for t in truth_list:
        by_reason.update(t.told_rejected)
    missing = sum(r["missing"] for r in rows)
    not_acked = sum(r["unacked"] for r in rows)
    told = sum(r["told_rejected"] for r in rows)
    unreported = sum(r["rejections_unreported"] for r in rows)
    mismatched = [r for r in rows if r["missing"] or r["extra"] or r["rejected_unexpected"] or r["unacked"]
                  or r["energy_error_kj"] > 1e-6]
    return {
        "sent": sum(r["sent"] for r in rows),
        "acknowledged": sum(r["sent"] - r["unacked"] - r["told_rejected"] - r["rejections_unreported"] for r in rows),
        "applied": sum(r["server_applied"] for r in rows),
        "rejected": told + unreported,
        "rejections_unreported": unreported,
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "lost": missing + not_acked,
        "lost_detail": {"missing_on_server": missing, "not_acknowledged": not_acked},
        "duplicated": sum(r["extra"] for r in rows),
        "rejected_unexpected": sum(r["rejected_unexpected"] for r in rows),
        "energy_max_abs_error_kj": round(max((r["energy_error_kj"] for r in rows), default=0.0), 9),
        "participants_mismatched": len(mismatched),
        "participants": rows,
    }


def server_rows(states: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """``{session_id: GET /v1/sessions/{id} JSON}`` -> rows keyed by (session, participant)."""
    return {
        (sid, p["participant"]): p
        for sid, snap in states.items()
        for p in snap.get("participants", [])
        if p is not None
    }
