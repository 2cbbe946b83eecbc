"""Rider profiles: what a rider says about themself, the estimates used when they have not,
and where profiles live in Redis.

A ``Profile`` holds what the rider set (every field optional): ``ftp_w``, ``hr_max_bpm``,
``hr_rest_bpm``, ``weight_kg``, ``birth_year``, ``sex`` (only the heart-rate calorie
equations use it) and ``units`` (how the rider's apps show numbers; the server always
speaks SI). ``check_profile`` validates a mapping into one (``ProfileError``, a
``ValueError``, with a message that says which field and why): the edge validates request
bodies with it, so a bad profile is refused before it is stored.

``Profile.effective(year)`` fills the gaps with documented estimates and names them in
``estimated`` (docs/metrics.md):

==============  ===============================================  =====================
field           estimate when unset                              source
==============  ===============================================  =====================
weight_kg       75 kg                                            a round adult default
age             35 years (from ``birth_year`` when set)          a round adult default
hr_max_bpm      220 - age                                        Fox, Naughton & Haskell
                                                                 (1971)
hr_rest_bpm     60 bpm                                           a typical adult value
ftp_w           2.0 W/kg x weight                                a conservative untrained
                                                                 adult value
sex             unknown: the mean of Keytel's two equations      Keytel et al. (2005)
==============  ===============================================  =====================

Redis (under the deployment's ``prefix``; ``{id}`` is the cluster hash tag, as every key):

=================================  ======  ===============================================
key                                type    fields
=================================  ======  ===============================================
``{p}:rider:{{id}}:profile``       hash    the ``Profile`` fields the rider set, as text
                                           (absent field: not set), ``updated_at`` (epoch s)
=================================  ======  ===============================================

A profile never expires. Session actors read it when a rider joins (``ProfileStore.get_many``,
one round trip per join or per tick that brings new riders) and keep the effective values in
the class state (and its checkpoints): no lookup per sample.
"""

from __future__ import annotations

import enum
import math
import operator
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from redis.typing import EncodableT, FieldT

from actors.errors import ActorError
from devices.text import TextError, clean_text
from storage.checkpoint import key_base
from storage.redis_url import AsyncRedis

DEFAULT_WEIGHT_KG = 75.0
DEFAULT_AGE_Y = 35
DEFAULT_HR_REST_BPM = 60.0
DEFAULT_FTP_W_PER_KG = 2.0


MAX_NAME_CHARS = 40  # a display name, as boards show it


class Sex(str, enum.Enum):
    FEMALE = "female"
    MALE = "male"


class Units(str, enum.Enum):
    METRIC = "metric"
    IMPERIAL = "imperial"


class ProfileError(ActorError, ValueError):
    """A profile field out of its range, of the wrong type, or unknown (the message says which)."""


# field -> (low, high) for numbers; the edge states the same ranges in its OpenAPI schema.
RANGES: dict[str, tuple[float, float]] = {
    "ftp_w": (30.0, 700.0),
    "hr_max_bpm": (100.0, 240.0),
    "hr_rest_bpm": (25.0, 120.0),
    "weight_kg": (25.0, 300.0),
    "birth_year": (1900.0, 9999.0),  # the upper bound is checked against the clock
}
MIN_AGE_Y = 5


@dataclass(frozen=True, slots=True)
class Profile:
    """What the rider set; ``None``: not set (an estimate is used, see the module docstring)."""

    ftp_w: float | None = None
    hr_max_bpm: float | None = None
    hr_rest_bpm: float | None = None
    weight_kg: float | None = None
    birth_year: int | None = None
    sex: Sex | None = None
    units: Units = Units.METRIC
    display_name: str | None = None  # what class boards show instead of the rider's id

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: enums as their values, unset fields as None. (Field by field, not
        ``dataclasses.asdict``, which deep-copies: this runs for every rider of a class in
        each checkpoint.)"""
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in zip(_FIELDS, _values(self))}

    def effective(self, year: int) -> Effective:
        """Every number the metrics need, estimates where unset (named in ``estimated``)."""
        estimated: list[str] = []

        def pick(name: str, value: float | None, estimate: float) -> float:
            if value is None:
                estimated.append(name)
                return estimate
            return float(value)

        weight = pick("weight_kg", self.weight_kg, DEFAULT_WEIGHT_KG)
        age = pick("age", None if self.birth_year is None else max(year - self.birth_year, 0), DEFAULT_AGE_Y)
        hr_max = pick("hr_max_bpm", self.hr_max_bpm, 220.0 - age)
        hr_rest = pick("hr_rest_bpm", self.hr_rest_bpm, DEFAULT_HR_REST_BPM)
        if hr_rest >= hr_max:  # only estimates can cross (a set pair is checked): keep a reserve
            hr_rest = min(hr_rest, hr_max - 20.0)
        ftp = pick("ftp_w", self.ftp_w, round(DEFAULT_FTP_W_PER_KG * weight))
        if self.sex is None:
            estimated.append("sex")
        return Effective(ftp_w=ftp, hr_max_bpm=hr_max, hr_rest_bpm=hr_rest, weight_kg=weight, age_y=age,
                         sex=self.sex, estimated=tuple(estimated))


_FIELDS = tuple(f.name for f in fields(Profile))
_values = operator.attrgetter(*_FIELDS)


@dataclass(frozen=True, slots=True)
class Effective:
    """The numbers a class computes with for one rider; ``estimated`` names the guesses."""

    ftp_w: float
    hr_max_bpm: float
    hr_rest_bpm: float
    weight_kg: float
    age_y: float
    sex: Sex | None
    estimated: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ftp_w": self.ftp_w, "hr_max_bpm": self.hr_max_bpm, "hr_rest_bpm": self.hr_rest_bpm,
            "weight_kg": self.weight_kg, "age_y": self.age_y, "sex": None if self.sex is None else self.sex.value,
            "estimated": list(self.estimated),
        }


DEFAULT = Profile().effective(2000)  # (the year matters only with a birth year)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProfileError(f"{name} must be a finite number")
    low, high = RANGES[name]
    if not low <= value <= high:
        raise ProfileError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return float(value)


def check_profile(raw: Mapping[str, Any], *, year: int | None = None) -> Profile:
    """``raw`` (field -> value, ``None`` for unset) as a ``Profile``; ``ProfileError`` otherwise.

    Numbers within ``RANGES``; ``birth_year`` an integer at least ``MIN_AGE_Y`` years
    before ``year`` (default: this year); ``hr_rest_bpm`` below ``hr_max_bpm`` when both
    are set; ``sex`` ``"female"``/``"male"``; ``units`` ``"metric"``/``"imperial"``."""
    if not isinstance(raw, Mapping):
        raise ProfileError("a profile is an object of fields")
    known = {f.name for f in fields(Profile)}
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise ProfileError(f"unknown profile field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for name in ("ftp_w", "hr_max_bpm", "hr_rest_bpm", "weight_kg"):
        if raw.get(name) is not None:
            values[name] = _number(name, raw[name])
    if raw.get("birth_year") is not None:
        values["birth_year"] = _birth_year(raw["birth_year"], year or time.gmtime().tm_year)
    rest, peak = values.get("hr_rest_bpm"), values.get("hr_max_bpm")
    if rest is not None and peak is not None and rest >= peak:
        raise ProfileError(f"hr_rest_bpm ({rest:g}) must be below hr_max_bpm ({peak:g})")
    if raw.get("sex") is not None:
        values["sex"] = _choice("sex", raw["sex"], Sex)
    if raw.get("units") is not None:
        values["units"] = _choice("units", raw["units"], Units)
    if raw.get("display_name") is not None:
        try:
            values["display_name"] = clean_text(raw["display_name"], "display_name", max_chars=MAX_NAME_CHARS)
        except TextError as exc:
            raise ProfileError(str(exc)) from None
    return Profile(**values)


def _birth_year(value: Any, year: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileError("birth_year must be an integer year")
    if not 1900 <= value <= year - MIN_AGE_Y:
        raise ProfileError(f"birth_year must be between 1900 and {year - MIN_AGE_Y}, got {value}")
    return value


def _choice(name: str, value: Any, kind: type[enum.Enum]) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ProfileError(f"{name} must be one of {', '.join(repr(m.value) for m in kind)}") from None


# -- Redis -----------------------------------------------------------------------------------
def profile_key(prefix: str, rider: str) -> str:
    return f"{key_base(prefix, 'rider', rider)}:profile"


def _from_hash(raw: Mapping[bytes | str, bytes | str]) -> Profile:
    text = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()}
    values: dict[str, Any] = {}
    for name in ("ftp_w", "hr_max_bpm", "hr_rest_bpm", "weight_kg"):
        if name in text:
            values[name] = float(text[name])
    if "birth_year" in text:
        values["birth_year"] = int(text["birth_year"])
    if "sex" in text:
        values["sex"] = Sex(text["sex"])
    if "units" in text:
        values["units"] = Units(text["units"])
    if "display_name" in text:
        values["display_name"] = text["display_name"]
    return Profile(**values)


class ProfileStore:
    """Profiles in Redis (see the module docstring); the client is the caller's."""

    def __init__(self, client: AsyncRedis, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def get(self, rider: str) -> Profile | None:
        """The rider's profile, ``None`` when they never set one."""
        raw = await self.client.hgetall(profile_key(self.prefix, rider))  # type: ignore[misc]
        return _from_hash(raw) if raw else None

    async def get_many(self, riders: Iterable[str]) -> dict[str, Profile]:
        """The profiles of those ``riders`` that have one (one pipeline; keys on many slots
        are fine for a cluster client's non-transactional pipeline)."""
        names = list(dict.fromkeys(riders))
        if not names:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for rider in names:
                pipe.hgetall(profile_key(self.prefix, rider))
            replies = await pipe.execute()
        return {rider: _from_hash(raw) for rider, raw in zip(names, replies, strict=True) if raw}

    async def put(self, rider: str, profile: Profile, *, now: float | None = None) -> None:
        """Replace the rider's profile (fields not set are removed)."""
        mapping: dict[FieldT, EncodableT] = {k: str(v) for k, v in profile.as_dict().items() if v is not None}
        mapping["updated_at"] = f"{time.time() if now is None else now:.3f}"
        key = profile_key(self.prefix, rider)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=mapping)
            await pipe.execute()
