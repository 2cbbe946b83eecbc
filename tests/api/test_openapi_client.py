"""The typed HTTP API: every operation of the edge's ``/openapi.json`` has a summary, a
description, a response model and its error responses; a Python client generated from it
by ``openapi-python-client`` (PyPI) imports, and parses real answers of a running edge into
its typed models (so the models match what the routes return)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
GENERATOR_CONFIG = ROOT / "clients" / "openapi-python-client.json"  # FIT and TCX are files (bytes)

NOT_JSON = {"/metrics", "/v1/riders/{rider}/rides/{ride}.fit", "/v1/riders/{rider}/rides/{ride}.tcx"}
PUBLIC = {"/livez", "/readyz", "/healthz"}


def test_every_operation_is_typed_described_and_lists_its_errors(edge: Any) -> None:
    spec = httpx.get(f"{edge.url}/openapi.json", timeout=30).json()
    schemas = spec["components"]["schemas"]
    operations = [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    assert len(operations) >= 30
    untyped = [f"{m.upper()} {p}" for p, m, op in operations if p not in NOT_JSON and "$ref" not in str(
        op["responses"][next(c for c in op["responses"] if c.startswith("2"))].get("content", {}))]
    assert not untyped, f"routes without an entry in api/openapi.py ROUTES (add one: model, summary, errors): {untyped}"
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        assert op.get("summary") and op.get("description") and op.get("operationId"), where
        success = next(code for code in op["responses"] if code.startswith("2"))
        if path not in NOT_JSON:
            ref = op["responses"][success]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in schemas, where
        if path not in PUBLIC:
            for code in ("401", "403"):
                error = op["responses"][code]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/ErrorBody"}, (where, code)
    assert {"error", "message"} <= set(schemas["ErrorBody"]["required"])
    assert schemas["SessionPage"]["example"]["sessions"], "examples are in the spec"


@pytest.fixture(scope="module")
def generated(edge: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tool = Path(sys.executable).parent / "openapi-python-client"
    if not tool.exists():
        pytest.skip("openapi-python-client is not installed (pip install -e '.[test]')")
    where = tmp_path_factory.mktemp("client")
    (where / "openapi.json").write_text(httpx.get(f"{edge.url}/openapi.json", timeout=30).text)
    env = dict(os.environ, PATH=f"{tool.parent}{os.pathsep}{os.environ.get('PATH', '')}")  # (its ruff hook)
    done = subprocess.run([str(tool), "generate", "--path", str(where / "openapi.json"), "--meta", "none",
                           "--config", str(GENERATOR_CONFIG), "--output-path", str(where / "pulseline_client")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and "Warning" not in done.stdout, done.stdout + done.stderr
    sys.path.insert(0, str(where))
    try:
        yield importlib.import_module("pulseline_client")
    finally:
        sys.path.remove(str(where))
        for name in [m for m in sys.modules if m.split(".")[0] == "pulseline_client"]:
            del sys.modules[name]
        shutil.rmtree(where, ignore_errors=True)


def test_a_generated_client_drives_a_class(generated: Any, edge: Any, tokens: Any, unique_id: str) -> None:
    api = importlib.import_module("pulseline_client.api.default")
    models = importlib.import_module("pulseline_client.models")
    call = {name: importlib.import_module(f"pulseline_client.api.default.{name}") for name in (
        "create_session", "get_session", "list_sessions", "join", "set_phase", "flush", "livez", "card")}
    assert api is not None
    client = generated.AuthenticatedClient(base_url=edge.url, token=tokens("operator"), timeout=httpx.Timeout(60))
    sid = f"gen-{unique_id}"

    created = call["create_session"].sync(client=client, body=models.CreateSession(id=sid, title="Generated"))
    assert isinstance(created, models.SessionCreated) and created.id == sid and created.created is True
    joined = call["join"].sync(sid, client=client, body=models.JoinRequest(participant="rider-1"))
    assert isinstance(joined, models.Joined) and joined.participant == "rider-1" and joined.slot == 0
    phase = call["set_phase"].sync(sid, client=client, body=models.PhaseRequest(phase="live"))
    assert isinstance(phase, models.PhaseSet) and phase.phase == "live"
    snapshot = call["get_session"].sync(sid, client=client)
    assert isinstance(snapshot, models.SessionSnapshot) and snapshot.phase == "live"
    assert [p["participant"] for p in snapshot.participants] == ["rider-1"]
    assert isinstance(call["flush"].sync(sid, client=client), models.Flushed)
    assert isinstance(call["card"].sync(sid, client=client), models.Card)
    page = call["list_sessions"].sync(client=client, limit=500)
    assert isinstance(page, models.SessionPage) and all(isinstance(s, models.SessionSummary) for s in page.sessions)
    assert isinstance(call["livez"].sync(client=generated.Client(base_url=edge.url)), models.Health)

    # errors parse into ErrorBody too
    anonymous = generated.Client(base_url=edge.url)
    refused = call["get_session"].sync_detailed(sid, client=anonymous)
    assert refused.status_code == 401 and isinstance(refused.parsed, models.ErrorBody)
    assert refused.parsed.error == "unauthorised"
    unknown = call["get_session"].sync_detailed(f"nope-{unique_id}", client=client)
    assert unknown.status_code == 404 and isinstance(unknown.parsed, models.ErrorBody)


def test_a_generated_client_covers_the_rest_of_the_api(generated: Any, edge: Any, tokens: Any, unique_id: str) -> None:
    """Leaderboards, rider profiles and history, webhooks, seats, view links, names, cluster
    status, scheduling, passivation and purge, through the generated client: every answer
    parses into the model the spec names (the first test drives a class's core routes)."""
    import time

    models = importlib.import_module("pulseline_client.models")

    import pkgutil

    groups = [m.name for m in pkgutil.iter_modules(importlib.import_module("pulseline_client.api").__path__)]

    def op(name: str) -> Any:  # (modules are grouped by the routes' tags)
        for group in groups:
            try:
                return importlib.import_module(f"pulseline_client.api.{group}.{name}")
            except ModuleNotFoundError:
                continue
        raise AssertionError(f"the generated client has no operation {name!r} (groups: {groups})")

    def ok(response: Any, model: str, status: int = 200) -> Any:
        assert response.status_code == status, (model, response.status_code, response.content[:300])
        assert isinstance(response.parsed, getattr(models, model)), (model, type(response.parsed))
        return response.parsed

    client = generated.AuthenticatedClient(base_url=edge.url, token=tokens("operator"), timeout=httpx.Timeout(60))
    board, sid, rider = f"gen{unique_id}", f"genx-{unique_id}", f"genr-{unique_id}"

    # leaderboards
    ok(op("create_board").sync_detailed(client=client, body=models.CreateBoard(name=board, metric="kj")), "BoardCreated", 201)
    ok(op("get_board").sync_detailed(board, client=client), "Board")
    scores = [models.ScoreIn(user=f"u{i}", source=f"s{i}", score=float(10 * i)) for i in range(1, 6)]
    ok(op("write_scores").sync_detailed(board, client=client, body=models.ScoresIn(scores=scores)), "Scores")
    top = ok(op("top").sync_detailed(board, client=client, n=3), "RankPage")
    assert [e.user for e in top.entries] == ["u5", "u4", "u3"] and top.entries[0].rank == 1
    mine = ok(op("rank").sync_detailed(board, "u3", client=client), "RankedEntry")
    assert mine.rank == 3 and mine.score == 30.0
    around = ok(op("around").sync_detailed(board, "u3", client=client, k=1), "Around")
    assert (around.above[0].user, around.entry.user, around.below[0].user) == ("u4", "u3", "u2")
    ok(op("reshard").sync_detailed(board, client=client, body=models.ReshardIn(shard_count=2)), "Resharded")

    # a rider's profile and history
    ok(op("put_profile").sync_detailed(rider, client=client, body=models.ProfileBody(ftp_w=250.0)), "Profile")
    ok(op("get_profile").sync_detailed(rider, client=client), "Profile")
    ok(op("list_rides").sync_detailed(rider, client=client), "Rides")
    ok(op("get_records").sync_detailed(rider, client=client), "Records")

    # webhooks
    hook = ok(op("subscribe").sync_detailed(client=client, body=models.Subscribe(
        url="http://127.0.0.1:9/hook", events=["class.ended"])), "Webhook", 201)
    ok(op("subscriptions").sync_detailed(client=client), "Webhooks")
    ok(op("subscription").sync_detailed(hook.id, client=client), "Webhook")
    ok(op("deliveries").sync_detailed(hook.id, client=client), "Deliveries")
    ok(op("unsubscribe").sync_detailed(hook.id, client=client), "Unsubscribed")

    # a class's seats, names, view link, schedule, cluster status, passivation and purge
    op("create_session").sync(client=client, body=models.CreateSession(id=sid))
    ok(op("set_capacity").sync_detailed(sid, client=client, body=models.CapacityRequest(capacity=50)), "Seats")
    op("join").sync(sid, client=client, body=models.JoinRequest(participant=rider))
    ok(op("names").sync_detailed(sid, client=client, riders=rider), "Names")
    ok(op("view_link").sync_detailed(sid, client=client, body=models.ViewLinkRequest(ttl_s=60.0)), "ViewLink", 201)
    ok(op("leave").sync_detailed(sid, rider, client=client), "Left")
    ok(op("status").sync_detailed(client=client), "ClusterStatus")
    ok(op("schedule").sync_detailed(f"gens-{unique_id}", client=client, body=models.ScheduleRequest(
        start_at=time.time() + 3600, expected_participants=10)), "Booked", 202)
    op("set_phase").sync(sid, client=client, body=models.PhaseRequest(phase="ended"))
    ok(op("passivate_route").sync_detailed(sid, client=client), "Passivated")
    ok(op("purge_session").sync_detailed(sid, client=client), "Purged")
    ok(op("ready").sync_detailed(client=generated.Client(base_url=edge.url)), "Readiness")
