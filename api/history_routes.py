"""The edge's HTTP routes for ride history (``history``; docs/history.md).

==============================================  ===============================================
``GET /v1/riders/{id}/rides``                   the rider's rides, newest first: ``limit``
                                                (1-100, default 20), ``before`` (the ``next``
                                                cursor of the previous page)
``GET /v1/riders/{id}/rides/{ride}``            one ride's summary (totals, rank, zones, bests,
                                                ``records``: the records it holds, revision)
``GET /v1/riders/{id}/rides/{ride}/series``     its per-second series (JSON columns)
``GET /v1/riders/{id}/rides/{ride}.fit``        the ride as a FIT activity file
``GET /v1/riders/{id}/rides/{ride}.tcx``        ... as TCX (TrainingCenterDatabase v2)
``GET /v1/riders/{id}/rides/{ride}.json``       ... as one JSON document (summary + series)
``GET /v1/riders/{id}/records``                 the rider's personal records
==============================================  ===============================================

Who: the rider's own participant token, or an operator (``api.scopes.authorise_profile``):
a rider sees only their own rides. A ride id is the id of its class. An unknown ride is
404 ``unknown_ride``; a cursor the server did not give is 400 ``bad_cursor``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import Response

from api.edge import SESSION_ID, edge_of, where_of
from api.scopes import Caller, authorise_profile, peer_of
from cluster.settings import Settings
from history.exports import MEDIA_TYPES, to_fit, to_json, to_tcx
from history.records import RecordStore
from history.rides import Ride, RideStore

RiderId = Annotated[str, Path(pattern=SESSION_ID.pattern, description="the rider's participant id")]
EXPORTS = {"fit": to_fit, "tcx": to_tcx}
RideId = Annotated[str, Path(pattern=SESSION_ID.pattern, description="the ride's id (its class's id)")]


def held_records(ride: str, records: dict[str, dict[str, Any] | None]) -> dict[str, float]:
    """The records (metric -> value) that ``ride`` holds."""
    return {metric: top["value"] for metric, top in records.items() if top and top["ride"] == ride}


def install(app: FastAPI, settings: Settings) -> None:
    def stores(request: Request) -> tuple[RideStore, RecordStore]:
        client = edge_of(request).directory.redis
        return RideStore(client, prefix=settings.prefix), RecordStore(client, prefix=settings.prefix)

    def check(request: Request, who: Any, rider: str) -> None:
        edge_of(request).gate.check(who, authorise_profile, rider, where=where_of(request), peer=peer_of(request))

    @app.get("/v1/riders/{rider}/rides")
    async def list_rides(rider: RiderId, who: Caller, request: Request,
                         limit: Annotated[int, Query(ge=1, le=100)] = 20,
                         before: Annotated[str | None, Query(max_length=300)] = None) -> dict[str, Any]:
        check(request, who, rider)
        rides, cursor = await stores(request)[0].page(rider, limit=limit, before=before)
        return {"rider": rider, "rides": rides, "next": cursor}

    @app.get("/v1/riders/{rider}/records")
    async def get_records(rider: RiderId, who: Caller, request: Request) -> dict[str, Any]:
        check(request, who, rider)
        return {"rider": rider, "records": await stores(request)[1].records(rider)}

    async def load(request: Request, who: Any, rider: str, ride: str) -> Ride:
        check(request, who, rider)
        return await stores(request)[0].get(rider, ride)

    def download(ride: Ride, kind: str, body: bytes) -> Response:
        return Response(body, media_type=MEDIA_TYPES[kind], headers={
            "Content-Disposition": f'attachment; filename="{ride.rider}-{ride.id}.{kind}"',
            "X-Ride-Revision": str(ride.summary["revision"])})

    async def export(request: Request, found: Ride, kind: str) -> Response:
        """A file export, made once per ride revision (kept in the ride's hash) and off the
        event loop: an hour's FIT file takes milliseconds, its TCX a tenth of a second or more."""
        rides = stores(request)[0]
        body = await rides.cached_export(found, kind)
        if body is None:
            body = await asyncio.to_thread(EXPORTS[kind], found)
            await rides.keep_export(found, kind, body)
        return download(found, kind, body)

    @app.get("/v1/riders/{rider}/rides/{ride}.fit", response_class=Response)
    async def ride_fit(rider: RiderId, ride: RideId, who: Caller, request: Request) -> Response:
        return await export(request, await load(request, who, rider, ride), "fit")

    @app.get("/v1/riders/{rider}/rides/{ride}.tcx", response_class=Response)
    async def ride_tcx(rider: RiderId, ride: RideId, who: Caller, request: Request) -> Response:
        return await export(request, await load(request, who, rider, ride), "tcx")

    @app.get("/v1/riders/{rider}/rides/{ride}.json")
    async def ride_json(rider: RiderId, ride: RideId, who: Caller, request: Request) -> dict[str, Any]:
        return to_json(await load(request, who, rider, ride))

    @app.get("/v1/riders/{rider}/rides/{ride}/series")
    async def ride_series(rider: RiderId, ride: RideId, who: Caller, request: Request) -> dict[str, Any]:
        found = await load(request, who, rider, ride)
        return {"id": found.id, "rider": rider, "revision": found.summary["revision"], **found.series_json()}

    @app.get("/v1/riders/{rider}/rides/{ride}")
    async def ride_summary(rider: RiderId, ride: RideId, who: Caller, request: Request) -> dict[str, Any]:
        check(request, who, rider)
        rides, records = stores(request)
        summary = await rides.summary(rider, ride)
        return {**summary, "records": held_records(ride, await records.records(rider))}
