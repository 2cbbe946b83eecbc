"""The typed HTTP API: every operation of the edge's ``/openapi.json`` has a summary, a
description, a response model and its error responses; a Python client generated from it
by ``openapi-python-client`` (PyPI) imports, and parses real answers of a running edge into
its typed models (so the models match what the routes return). Every operation of the spec
is driven through the generated client: the last test fails if one was not answered 2xx."""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from lxml import etree
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect as ws_connect

from tests.history.fit_decoders import from_fitdecode

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
GENERATOR_CONFIG = ROOT / "clients" / "openapi-python-client.json"  # FIT and TCX are files (bytes)
TCX_XSD = ROOT / "tests" / "history" / "TrainingCenterDatabasev2.xsd"
TCX_NS = "{http://www.garmin.com/xmlschemas/TrainingCenterDatabase/v2}"

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
    # as docs/clients.md runs it: the venv's bin not on PATH (the config turns off the
    # generator's ruff hooks, which warned "ruff is not in PATH")
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if Path(d) != tool.parent)
    env = dict(os.environ, PATH=path)
    done = subprocess.run([str(tool), "generate", "--path", str(where / "openapi.json"), "--meta", "none",
                           "--config", str(GENERATOR_CONFIG), "--output-path", str(where / "pulseline_client")],
                          capture_output=True, text=True, timeout=300, env=env)
    said = done.stdout + done.stderr
    assert done.returncode == 0 and "Warning" not in said and "not in PATH" not in said, said
    sys.path.insert(0, str(where))
    try:
        yield importlib.import_module("pulseline_client")
    finally:
        sys.path.remove(str(where))
        for name in [m for m in sys.modules if m.split(".")[0] == "pulseline_client"]:
            del sys.modules[name]
        shutil.rmtree(where, ignore_errors=True)


class Driven:
    """Every operation of the spec, and those a generated client got a 2xx answer from (an
    httpx response hook on every client the tests make: what the edge really answered)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.operations: dict[str, tuple[str, re.Pattern[str], int]] = {}
        for path, ops in spec["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")
            literal = len(re.sub(r"\{[^/]+?\}", "", path))  # (the most specific template wins: {ride}.fit over {ride})
            for method, op in ops.items():
                self.operations[op["operationId"]] = (method.upper(), pattern, literal)
        self.answered: set[str] = set()

    def saw(self, response: httpx.Response) -> None:
        if not 200 <= response.status_code < 300:
            return
        path = response.request.url.path
        matches = [(literal, name) for name, (method, pattern, literal) in self.operations.items()
                   if method == response.request.method and pattern.match(path)]
        assert matches, f"{response.request.method} {path} is no operation of the spec"
        self.answered.add(max(matches)[1])

    def clients(self, generated: Any, edge: Any) -> Any:
        def make(token: str | None = None) -> Any:
            hooks = {"httpx_args": {"event_hooks": {"response": [self.saw]}}, "timeout": httpx.Timeout(60)}
            if token is None:
                return generated.Client(base_url=edge.url, **hooks)
            return generated.AuthenticatedClient(base_url=edge.url, token=token, **hooks)
        return make


@pytest.fixture(scope="module")
def driven(edge: Any) -> Driven:
    return Driven(httpx.get(f"{edge.url}/openapi.json", timeout=30).json())


@pytest.fixture
def client_of(generated: Any, edge: Any, driven: Driven) -> Any:
    """``client_of(token)``: a generated client (``None``: anonymous) whose answers are recorded."""
    return driven.clients(generated, edge)


def operation(name: str) -> Any:
    """The generated client's module of an operation (modules are grouped by the routes' tags)."""
    import pkgutil

    for group in [m.name for m in pkgutil.iter_modules(importlib.import_module("pulseline_client.api").__path__)]:
        try:
            return importlib.import_module(f"pulseline_client.api.{group}.{name}")
        except ModuleNotFoundError:
            continue
    raise AssertionError(f"the generated client has no operation {name!r}")


def parsed_as(response: Any, model: str, status: int = 200) -> Any:
    """The answer's typed model (``File``: a file's bytes), after checking the status."""
    kind = getattr(importlib.import_module("pulseline_client.models"), model, None) or getattr(
        importlib.import_module("pulseline_client.types"), model)
    assert response.status_code == status, (model, response.status_code, response.content[:300])
    assert isinstance(response.parsed, kind), (model, type(response.parsed))
    return response.parsed


def test_a_generated_client_drives_a_class(generated: Any, client_of: Any, tokens: Any, unique_id: str) -> None:
    api = importlib.import_module("pulseline_client.api.default")
    models = importlib.import_module("pulseline_client.models")
    call = {name: importlib.import_module(f"pulseline_client.api.default.{name}") for name in (
        "create_session", "get_session", "list_sessions", "join", "set_phase", "flush", "livez", "card")}
    assert api is not None
    client = client_of(tokens("operator"))
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
    assert isinstance(call["livez"].sync(client=client_of(None)), models.Health)

    # errors parse into ErrorBody too
    anonymous = client_of(None)
    refused = call["get_session"].sync_detailed(sid, client=anonymous)
    assert refused.status_code == 401 and isinstance(refused.parsed, models.ErrorBody)
    assert refused.parsed.error == "unauthorised"
    unknown = call["get_session"].sync_detailed(f"nope-{unique_id}", client=client)
    assert unknown.status_code == 404 and isinstance(unknown.parsed, models.ErrorBody)


def test_a_generated_client_covers_the_rest_of_the_api(client_of: Any, tokens: Any, unique_id: str) -> None:
    """Leaderboards, rider profiles, webhooks, seats, view links, names, cluster status,
    scheduling, passivation and purge, through the generated client: every answer parses
    into the model the spec names (the first test drives a class's core routes, the next a
    rider's ride history, its exports, on demand and the metrics)."""
    import time

    models = importlib.import_module("pulseline_client.models")
    op, ok = operation, parsed_as

    client = client_of(tokens("operator"))
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
    resharded = ok(op("reshard").sync_detailed(board, client=client, body=models.ReshardIn(shard_count=2)), "Resharded")
    assert resharded.shard_count == 2
    dropped = ok(op("drop_period").sync_detailed(board, top.period, client=client), "PeriodDropped")
    assert (dropped.period, dropped.dropped_records) == (top.period, 5)  # every score, over both shards
    assert ok(op("top").sync_detailed(board, client=client, n=3), "RankPage").entries == []

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
    for probe in ("ready", "healthz"):
        readiness = ok(op(probe).sync_detailed(client=client_of(None)), "Readiness")
        assert readiness.ok is True and readiness.checks["redis"]["ok"] is True, (probe, readiness.to_dict())


async def _ride_acked(edge: Any, token: str, sid: str, device: str, rider: str,
                      samples: list[list[Any]]) -> None:
    """A hub sends ``samples`` of ``device`` (``rider`` in ``sid``) over the device protocol (a
    WebSocket: no route of the spec) as a client must (docs/protocol.md: after ``welcome``,
    resending what is not acknowledged after a ``throttle`` or a new ``welcome``), until every
    sample is acknowledged as durable."""
    async def send(after: int) -> None:
        await ws.send(msgpack.packb({"t": "samples", "device": device, "samples": samples[after:]}))

    async with ws_connect(f"{edge.ws_url}/v1/devices", additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(msgpack.packb({"t": "hello", "v": 1, "hub": "studio", "devices": [
            {"device": device, "participant": rider, "session": sid}]}))
        acked, welcomed = 0, False
        while acked < len(samples):
            frame = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 60))
            if frame["t"] == "welcome":
                acked = max(acked, frame["devices"].get(device, 0))
                await send(acked)  # (the first: every sample; later ones: what is not durable)
                welcomed = True
            elif frame["t"] == "throttle" and welcomed:
                await asyncio.sleep(frame["retry_after_ms"] / 1000)
                await send(acked)
            else:
                assert frame["t"] == "ack", frame  # (no error: every sample is valid)
                acked = max(acked, frame["acks"].get(device, 0))


def test_a_generated_client_drives_a_rides_history_exports_and_on_demand(
        client_of: Any, edge: Any, tokens: Any, unique_id: str, run: Any) -> None:
    """A rider rides a class (12 s of samples over the device protocol), the class ends: the
    rider's ride, as a summary, JSON, series, FIT and TCX, the class's on-demand class and the
    edge's metrics, through the generated client; each answer holds what was ridden."""
    import time

    models = importlib.import_module("pulseline_client.models")
    op, ok = operation, parsed_as
    client = client_of(tokens("operator"))
    sid, rider, device = f"genride-{unique_id}", f"genrider-{unique_id}", f"genbike-{unique_id}"

    ok(op("create_session").sync_detailed(client=client, body=models.CreateSession(id=sid, title="Ride")), "SessionCreated", 201)
    ok(op("set_phase").sync_detailed(sid, client=client, body=models.PhaseRequest(phase="live")), "PhaseSet")
    watts = [150.0 + 10 * i for i in range(12)]
    start = float(int(time.time()) + 1)  # (whole seconds after the class went live: one sample each)
    samples = [[i + 1, start + i + 0.5, 120.0 + i, w, 85.0] for i, w in enumerate(watts)]
    hub = tokens("hub", hub="studio", devices=[device], sessions=[sid])
    run(_ride_acked(edge, hub, sid, device, rider, samples))
    flushed = ok(op("flush").sync_detailed(sid, client=client), "Flushed")
    assert flushed.durable[device] == len(samples)
    ok(op("set_phase").sync_detailed(sid, client=client, body=models.PhaseRequest(phase="ended")), "PhaseSet")

    # the ride is recorded in the background once the class ended (history sink)
    deadline = time.monotonic() + 120
    while not (listing := ok(op("list_rides").sync_detailed(rider, client=client), "Rides")).rides:
        assert time.monotonic() < deadline, f"{rider}'s ride was never recorded"
        time.sleep(0.2)
    assert [type(r).__name__ for r in listing.rides] == ["RideSummary"] and listing.rides[0].id == sid

    summary = ok(op("ride_summary").sync_detailed(rider, sid, client=client), "RideSummary")
    assert (summary.id, summary.rider, summary.rank, summary.riders) == (sid, rider, 1, 1)
    assert summary.recorded_s == len(watts) and summary.start_ts == start
    assert summary.totals["max_power_w"] == max(watts) and summary.totals["samples"] == len(watts)
    assert summary.bests["class_output_kj"] and summary.records["class_output_kj"] == summary.bests["class_output_kj"]

    document = ok(op("ride_json").sync_detailed(rider, sid, client=client), "RideDocument")
    assert document.id == sid and document.revision == summary.revision
    assert isinstance(document.series, models.RideColumns) and document.series.t == list(range(len(watts)))
    assert document.series.power_w == watts and document.series.hr_bpm == [s[2] for s in samples]
    series = ok(op("ride_series").sync_detailed(rider, sid, client=client), "RideSeries")
    assert (series.id, series.rider, series.revision, series.start_ts) == (sid, rider, summary.revision, start)
    assert series.power_w == watts and series.cadence_rpm == [85.0] * len(watts) and series.speed_mps == [None] * len(watts)

    fit_answer = op("ride_fit").sync_detailed(rider, sid, client=client)
    fit = ok(fit_answer, "File").payload.read()
    assert fit_answer.headers["content-type"] == "application/vnd.ant.fit"
    assert fit[0] in (12, 14) and fit[8:12] == b".FIT"  # the FIT file header: its size, then the magic
    decoded = from_fitdecode(fit)  # (CRC checked)
    assert [decoded[int(start) + i]["power_w"] for i in range(len(watts))] == watts

    tcx = ok(op("ride_tcx").sync_detailed(rider, sid, client=client), "File").payload.read()
    root = etree.fromstring(tcx)
    assert root.tag == f"{TCX_NS}TrainingCenterDatabase"
    schema = etree.XMLSchema(etree.parse(str(TCX_XSD)))
    assert schema.validate(root), schema.error_log
    assert [float(v) for v in root.xpath("//*[local-name()='Watts']/text()")] == watts
    assert len(list(root.iter(f"{TCX_NS}Trackpoint"))) == len(watts)

    # the class ridden on demand: the recorded rider is its ghost
    od = ok(op("on_demand").sync_detailed(sid, client=client), "OnDemand", 201)
    assert (od.id, od.of, od.created) == (f"{sid}:od", sid, True)
    assert od.replay["recorded"] == 1 and od.replay["class_s"] >= len(watts), od.replay.to_dict()
    again = ok(op("on_demand").sync_detailed(sid, client=client), "OnDemand", 201)
    assert (again.id, again.created) == (od.id, False)
    ok(op("purge_session").sync_detailed(od.id, client=client, force=True), "Purged")

    # the edge's metrics, Prometheus text: the samples above were acknowledged
    metrics = op("metrics").sync_detailed(client=client)
    assert metrics.status_code == 200 and isinstance(metrics.parsed, str)
    assert metrics.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(metrics.parsed)}
    assert families["pulseline_samples_acked"].type == "counter"
    acked = [s.value for s in families["pulseline_samples_acked"].samples if s.name == "pulseline_samples_acked_total"]
    assert acked and acked[0] >= len(watts), acked
    refused = op("metrics").sync_detailed(client=client_of(None))
    assert refused.status_code == 401 and isinstance(refused.parsed, models.ErrorBody)


DRIVERS = ("test_a_generated_client_drives_a_class", "test_a_generated_client_covers_the_rest_of_the_api",
           "test_a_generated_client_drives_a_rides_history_exports_and_on_demand")


def test_every_operation_of_the_spec_is_driven(driven: Driven, request: pytest.FixtureRequest) -> None:
    """Every operation of ``/openapi.json`` got a 2xx answer through the generated client in
    the tests above (a route added to the spec and not driven fails here)."""
    ran = {item.name for item in request.session.items if item.module is request.module}
    if not set(DRIVERS) <= ran:
        pytest.skip(f"needs the whole module (the driving tests {sorted(set(DRIVERS) - ran)} were not selected)")
    assert len(driven.operations) >= 42
    assert not set(driven.operations) - driven.answered, (
        f"operations of the spec no test drove through the generated client: "
        f"{sorted(set(driven.operations) - driven.answered)}")
