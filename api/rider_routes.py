"""The edge's HTTP routes for rider profiles (``actors.profile``; docs/metrics.md).

==================================  ==============================================================
``PUT /v1/riders/{id}/profile``     replace the rider's profile (every field optional; 422 with a
                                    message naming the field for anything out of range)
``GET /v1/riders/{id}/profile``     what the rider set, and the numbers classes compute with
                                    (``effective``; ``estimated`` names the guesses), and the
                                    rider's personal records (``records``, docs/history.md)
==================================  ==============================================================

Who: the rider's own participant token, or an operator (``api.scopes.authorise_profile``).
A class reads the profile when the rider joins it (``POST .../participants``, or its
device's first samples) and re-reads it every ``profile_refresh_s`` (60 s) while not ended.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.profile import MAX_NAME_CHARS, RANGES, Profile, ProfileStore, Sex, Units, check_profile
from api.edge import SESSION_ID, edge_of, where_of
from api.scopes import Caller, authorise_profile, peer_of
from cluster.settings import Settings
from history.records import RecordStore

RiderId = Annotated[str, Path(pattern=SESSION_ID.pattern, description="the rider's participant id")]


def _bounded(name: str, description: str) -> Any:
    low, high = RANGES[name]
    return Field(default=None, ge=low, le=high, allow_inf_nan=False, description=description)


class ProfileBody(BaseModel):
    """A rider profile; an omitted or null field is "not set" (an estimate is used)."""

    model_config = ConfigDict(extra="forbid")

    ftp_w: float | None = _bounded("ftp_w", "functional threshold power, W")
    hr_max_bpm: float | None = _bounded("hr_max_bpm", "maximum heart rate, bpm")
    hr_rest_bpm: float | None = _bounded("hr_rest_bpm", "resting heart rate, bpm")
    weight_kg: float | None = _bounded("weight_kg", "body weight, kg")
    birth_year: int | None = Field(default=None, ge=1900, description="year of birth (age = this year - it)")
    sex: Sex | None = Field(default=None, description="for the heart-rate calorie equations only")
    units: Units | None = Field(default=None, description="how the rider's apps show numbers (metric by default)")
    display_name: str | None = Field(default=None, max_length=4 * MAX_NAME_CHARS,
                                     description=f"the name class boards show (1-{MAX_NAME_CHARS} characters; default: the rider's id)")

    @model_validator(mode="after")
    def _consistent(self) -> ProfileBody:
        check_profile(self.model_dump(exclude_none=True))  # ProfileError is a ValueError: 422
        return self

    def profile(self) -> Profile:
        return check_profile(self.model_dump(exclude_none=True))


def profile_view(rider: str, profile: Profile | None) -> dict[str, Any]:
    profile = profile or Profile()
    return {"rider": rider, "set": profile.as_dict(),
            "effective": profile.effective(time.gmtime().tm_year).as_dict()}


def install(app: FastAPI, settings: Settings) -> None:
    def store(request: Request) -> ProfileStore:
        return ProfileStore(edge_of(request).directory.redis, prefix=settings.prefix)

    def check(request: Request, who: Any, rider: str) -> None:
        edge_of(request).gate.check(who, authorise_profile, rider, where=where_of(request), peer=peer_of(request))

    @app.put("/v1/riders/{rider}/profile")
    async def put_profile(rider: RiderId, body: ProfileBody, who: Caller, request: Request) -> dict[str, Any]:
        check(request, who, rider)
        profile = body.profile()
        await store(request).put(rider, profile)
        return profile_view(rider, profile)

    @app.get("/v1/riders/{rider}/profile")
    async def get_profile(rider: RiderId, who: Caller, request: Request) -> dict[str, Any]:
        check(request, who, rider)
        view = profile_view(rider, await store(request).get(rider))
        view["records"] = await RecordStore(edge_of(request).directory.redis, prefix=settings.prefix).records(rider)
        return view
