"""The class page and the landing page in a real browser (issue 17): the board updates while
riders ride, the viewer's own row is highlighted, a dropped connection comes back by
itself, a 360 px phone needs no horizontal scroll, and /docs works with no CDN.

``PULSELINE_SCREENSHOTS=1`` also writes the screenshots in docs/img/ (how they were made).
"""

from __future__ import annotations

import asyncio
import re
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import connect


pytestmark = pytest.mark.integration
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "img" if os.environ.get("PULSELINE_SCREENSHOTS") else None


class Riders:
    """A hub riding ``names`` in ``sid`` at 2 Hz on its own thread until ``stop()``."""

    def __init__(self, ws_url: str, token: str, sid: str, names: list[str]) -> None:
        self.ws_url, self.token, self.sid, self.names = ws_url, token, sid, names
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._ride()), daemon=True)

    def start(self) -> Riders:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(20)

    async def _ride(self) -> None:
        devices = [f"bike-{i}" for i in range(len(self.names))]
        async with connect(f"{self.ws_url}/v1/devices", additional_headers={"Authorization": f"Bearer {self.token}"}) as ws:
            await ws.send(msgpack.packb({"t": "hello", "v": 1, "hub": "studio", "devices": [
                {"device": d, "participant": n, "session": self.sid} for d, n in zip(devices, self.names, strict=True)]}))
            seq = 0
            while not self._stop.is_set():
                seq += 1
                now = time.time()
                for i, device in enumerate(devices):
                    row = [seq, now, 120.0 + i, 150.0 + 40 * i, 80.0 + i, 8.0 + i, 5.0 * seq]
                    await ws.send(msgpack.packb({"t": "samples", "device": device, "samples": [row]}))
                self.sent = seq
                await asyncio.sleep(0.5)


def _class(edge: Any, tokens: Any, sid: str, title: str) -> dict[str, Any]:
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid, "title": title}, headers=tokens.headers(), timeout=30).raise_for_status()
    httpx.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": "live"}, headers=tokens.headers(), timeout=30).raise_for_status()
    return httpx.post(f"{edge.url}/v1/sessions/{sid}/view-links", headers=tokens.headers(), timeout=30).json()  # type: ignore[no-any-return]


def _hub(tokens: Any, sid: str, n: int) -> str:
    return tokens("hub", hub="studio", devices=[f"bike-{i}" for i in range(n)], sessions=[sid])  # type: ignore[no-any-return]


def _shot(page: Any, name: str) -> None:
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / name), full_page=True)


def test_the_board_updates_while_riders_ride_and_the_own_row_is_highlighted(browser: Any, edge: Any, tokens: Any, unique_id: str) -> None:
    from playwright.sync_api import expect

    sid = f"page-live-{unique_id}"
    names = ["Ann", "Bob", "Cat <3", "Dee"]
    httpx.put(f"{edge.url}/v1/riders/Ann/profile", json={"display_name": "Ann Lee", "ftp_w": 200},
              headers=tokens.headers(), timeout=30).raise_for_status()
    link = _class(edge, tokens, sid, "Tuesday Climb")
    riders = Riders(edge.ws_url, _hub(tokens, sid, len(names)), sid, names).start()
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    page = context.new_page()
    try:
        path, fragment = link["url"].split("#", 1)
        page.goto(f"{edge.url}{path}?participant=Bob#{fragment}")
        expect(page.locator("#body tr")).to_have_count(4, timeout=20000)
        expect(page.locator("#title")).to_have_text("Tuesday Climb", timeout=20000)
        expect(page.locator("#meta")).to_contain_text("live · 4 riders", timeout=20000)
        own = page.locator("#body tr.you")
        expect(own).to_have_count(1, timeout=20000)
        expect(own.locator("td.name")).to_have_text("Bob", timeout=20000)
        expect(page.locator("#you")).to_contain_text("of 4", timeout=20000)
        first = float(own.locator("td.col-energy_kj").text_content() or "0")
        expect(own.locator("td.col-energy_kj")).not_to_have_text(f"{first:.1f}", timeout=15000)  # it moves
        assert float(own.locator("td.col-energy_kj").text_content() or "0") > first
        # the most power leads (once a tick has every rider's latest sample: a tick may carry
        # some riders' samples of a round and the next tick the others')
        expect(page.locator("#body tr:first-child td.name")).to_have_text("Dee", timeout=20000)
        # Ann's display name (her profile) instead of her id; power coloured by her zone
        # (150 W of an FTP of 200 is 75 %: Coggan zone 2)
        ann = page.locator("#body tr", has=page.locator("td.name", has_text="Ann Lee"))
        expect(ann).to_have_count(1, timeout=20000)
        expect(ann.locator("td.col-power_w")).to_have_class(re.compile(r"\bpower_zone-2\b"), timeout=20000)
        page.wait_for_timeout(1500)  # a few points on the chart
        _shot(page, "class-page.png")
    finally:
        riders.stop()
        context.close()


def test_an_ended_class_shows_its_riders_names_on_the_final_board(browser: Any, edge: Any, tokens: Any, unique_id: str) -> None:
    """An ended class that nothing changes any more sends its board once: the display names,
    which the page asks for after that board, must still reach it (before, they showed only
    on the next board, which never came)."""
    from playwright.sync_api import expect

    sid = f"page-ended-{unique_id}"
    names = [f"eve-{unique_id}", f"fay-{unique_id}"]
    httpx.put(f"{edge.url}/v1/riders/{names[0]}/profile", json={"display_name": "Eve Ng"},
              headers=tokens.headers(), timeout=30).raise_for_status()
    link = _class(edge, tokens, sid, "Done")
    for name in names:  # joined, never rode: no presence left to change the board later
        httpx.post(f"{edge.url}/v1/sessions/{sid}/participants", json={"participant": name},
                   headers=tokens.headers(), timeout=30).raise_for_status()
    httpx.post(f"{edge.url}/v1/sessions/{sid}/phase", json={"phase": "ended"}, headers=tokens.headers(), timeout=30).raise_for_status()
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    page = context.new_page()
    try:
        path, fragment = link["url"].split("#", 1)
        page.goto(f"{edge.url}{path}?participant=zed#{fragment}")  # (zed never joined: the page says so)
        expect(page.locator("#body tr")).to_have_count(2, timeout=20000)
        expect(page.locator("#you")).to_have_text("zed is not riding in this class (yet)", timeout=20000)
        expect(page.locator("#body td.name", has_text="Eve Ng")).to_have_count(1, timeout=20000)
        expect(page.locator("#body td.name", has_text=names[1])).to_have_count(1, timeout=20000)  # no name: its id
    finally:
        context.close()


def test_a_class_of_one_says_one_rider(browser: Any, edge: Any, tokens: Any, unique_id: str) -> None:
    from playwright.sync_api import expect

    sid = f"page-one-{unique_id}"
    link = _class(edge, tokens, sid, "Solo")
    riders = Riders(edge.ws_url, _hub(tokens, sid, 1), sid, ["Ann"]).start()
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{edge.url}{link['url']}")
        expect(page.locator("#meta")).to_contain_text("live · 1 rider · updated", timeout=20000)
    finally:
        context.close()
        riders.stop()


def test_the_phone_layout_needs_no_horizontal_scroll(browser: Any, edge: Any, tokens: Any, unique_id: str) -> None:
    from playwright.sync_api import expect

    sid = f"page-phone-{unique_id}"
    names = [f"Rider with a rather long name {i}" for i in range(6)]
    link = _class(edge, tokens, sid, "Phone-sized class")
    riders = Riders(edge.ws_url, _hub(tokens, sid, len(names)), sid, names).start()
    context = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        path, fragment = link["url"].split("#", 1)
        page.goto(f"{edge.url}{path}?participant={names[2].replace(' ', '%20')}#{fragment}")
        expect(page.locator("#body tr")).to_have_count(6, timeout=20000)
        assert page.evaluate("document.documentElement.scrollWidth") <= page.evaluate("window.innerWidth")
        assert page.evaluate("document.querySelector('.scroll').scrollWidth <= document.querySelector('.scroll').clientWidth")
        assert page.locator("th.col-distance_m").is_hidden() and page.locator("th.col-power_w").is_visible()
        _shot(page, "class-page-phone.png")
    finally:
        riders.stop()
        context.close()


def test_the_page_shows_the_class_plan_segment_time_left_and_cue(browser: Any, edge: Any, tokens: Any, unique_id: str) -> None:
    from playwright.sync_api import expect

    sid = f"page-plan-{unique_id}"
    plan = {"segments": [{"kind": "warm-up", "duration_s": 600, "ftp_pct": [50, 60], "cue": "Easy <b>spin</b>"},
                         {"kind": "interval", "duration_s": 60, "power_zone": 5, "cue": "Sprint!"}]}
    httpx.post(f"{edge.url}/v1/sessions", json={"id": sid, "start_at": time.time() + 1, "plan": plan},
               headers=tokens.headers(), timeout=30).raise_for_status()
    link = httpx.post(f"{edge.url}/v1/sessions/{sid}/view-links", headers=tokens.headers(), timeout=30).json()
    riders = Riders(edge.ws_url, _hub(tokens, sid, 2), sid, ["Ann", "Bob"]).start()
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    page = context.new_page()
    try:
        path, fragment = link["url"].split("#", 1)
        page.goto(f"{edge.url}{path}?participant=Bob#{fragment}")
        expect(page.locator("#plan-kind")).to_have_text("Warm-up (1/2)", timeout=20000)
        expect(page.locator("#plan-cue")).to_have_text("Easy <b>spin</b>", timeout=20000)  # text, not HTML
        expect(page.locator("#plan-left")).to_contain_text("left · class", timeout=20000)
        expect(page.locator("#plan-next")).to_have_text("Next: interval — Sprint!", timeout=20000)
        left = page.locator("#plan-left").text_content()
        expect(page.locator("#plan-left")).not_to_have_text(left or "", timeout=15000)  # it counts down
        # Ann rides 150 W, Bob 190 W against 50-60 % of an estimated FTP: a target for each row
        expect(page.locator("#body tr.you td.col-power_target")).not_to_have_text("–", timeout=20000)
        expect(page.locator("#you")).to_contain_text("target:", timeout=20000)
    finally:
        riders.stop()
        context.close()


def test_a_dropped_connection_comes_back_by_itself(browser: Any, edge_settings: Any, tokens: Any, unique_id: str) -> None:
    from playwright.sync_api import expect

    from tests.conftest import EdgeServer, _free_port

    settings = edge_settings.model_copy(update={"port": _free_port()})
    server = EdgeServer(settings).start()
    sid = f"page-drop-{unique_id}"
    context = browser.new_context()
    page = context.new_page()
    try:
        link = _class(server, tokens, sid, "Reconnecting class")
        page.goto(f"{server.url}{link['url']}")
        expect(page.locator("#meta")).to_contain_text("riders", timeout=20000)
        server.stop()
        expect(page.locator("#meta")).to_have_text("reconnecting…", timeout=20000)
        server = EdgeServer(settings).start()  # the same port, as after a restart
        expect(page.locator("#meta")).to_contain_text("riders", timeout=30000)
        assert page.locator("#note").is_hidden()
    finally:
        context.close()
        server.stop()


def test_the_landing_page_lists_running_classes_and_the_docs_work_offline(browser: Any, edge: Any, tokens: Any, unique_id: str) -> None:
    from playwright.sync_api import expect

    sid = f"page-land-{unique_id}"
    _class(edge, tokens, sid, "Landing class")
    docs = httpx.get(f"{edge.url}/docs", timeout=30).text
    assert "/static/swagger/swagger-ui-bundle.js" in docs and "cdn." not in docs
    assert httpx.get(f"{edge.url}/static/swagger/swagger-ui-bundle.js", timeout=30).status_code == 200
    redoc = httpx.get(f"{edge.url}/redoc", timeout=30).text
    assert "/static/swagger/redoc.standalone.js" in redoc and "cdn." not in redoc and "fonts.googleapis" not in redoc
    context = browser.new_context()
    # no network beyond the edge: a CDN request would fail the page
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(edge.url) else route.abort())
    page = context.new_page()
    try:
        page.goto(f"{edge.url}/")
        link = page.locator("#classes a", has_text="Landing class")
        expect(link).to_have_count(1, timeout=20000)
        _shot(page, "landing.png")
        link.click()
        expect(page.locator("#title")).to_have_text("Landing class", timeout=20000)
        expect(page.locator("#meta")).to_contain_text("live", timeout=20000)
        assert "token" not in page.url
        page.goto(f"{edge.url}/docs")
        expect(page.locator(".opblock").first).to_be_visible(timeout=20000)
    finally:
        context.close()


def test_the_card_is_for_board_watchers_only(edge: Any, tokens: Any, unique_id: str) -> None:
    sid = f"page-card-{unique_id}"
    link = _class(edge, tokens, sid, "Card <b>class</b>")
    viewer = {"Authorization": f"Bearer {link['token']}"}
    card = httpx.get(f"{edge.url}/v1/sessions/{sid}/card", headers=viewer, timeout=30).json()
    assert card == {"id": sid, "title": "Card <b>class</b>", "phase": "live", "created_at": pytest.approx(time.time(), abs=120)}
    assert httpx.get(f"{edge.url}/v1/sessions/{sid}/card", timeout=30).status_code == 401
    other = {"Authorization": f"Bearer {tokens('viewer', sessions=[f'x-{sid}'])}"}
    assert httpx.get(f"{edge.url}/v1/sessions/{sid}/card", headers=other, timeout=30).status_code == 403
    stranger = tokens.headers("participant", participant="zed", sessions=[sid])
    assert httpx.get(f"{edge.url}/v1/sessions/{sid}/card", headers=stranger, timeout=30).status_code == 403


def test_the_live_list_is_for_loopback_in_development(edge: Any, tokens: Any, unique_id: str) -> None:
    sid = f"page-list-{unique_id}"
    _class(edge, tokens, sid, "Listed")
    classes = httpx.get(f"{edge.url}/v1/dev/live", timeout=30).json()["classes"]
    mine = [c for c in classes if c["id"] == sid]
    assert mine and mine[0]["title"] == "Listed" and mine[0]["view"].startswith(f"/v1/sessions/{sid}/view#token=")


