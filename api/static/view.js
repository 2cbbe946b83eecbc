// The live class board. Everything a client supplied (rider names, tags) is set with
// textContent: text, never HTML. The page's only credential is a view token that arrives
// in the URL fragment (#token=..., never sent to a server), is kept in sessionStorage for
// this tab, removed from the address bar at once, and offered to the WebSocket as a
// subprotocol, never in a URL. Served with a strict Content-Security-Policy (api/pages.py).
"use strict";
(() => {
  const LABELS = {
    participant: "Rider", rank: "#", energy_kj: "Output (kJ)", hr_bpm: "Heart rate",
    power_w: "Power (W)", cadence_rpm: "Cadence (rpm)", speed_mps: "Speed (km/h)",
    distance_m: "Distance (km)", samples: "Samples",
  };
  const HIDDEN = new Set(["last_ts"]);
  const TERMINAL = {
    4401: "This link has expired or is not valid: ask for a new one.",
    4403: "This link does not give access to this class.",
    4404: "There is no such class.",
    4400: "The board could not be opened (bad request).",
  };
  const $ = (id) => document.getElementById(id);
  const sid = decodeURIComponent(location.pathname.split("/")[3] || "");
  const storeKey = "pulseline.view." + sid;
  const query = new URLSearchParams(location.search);
  const you = query.get("participant");

  function takeToken() {
    const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
    const token = fragment.get("token") || query.get("token");  // ?token= from old links
    if (token) {
      try { sessionStorage.setItem(storeKey, token); } catch (e) { /* storage off: memory only */ }
      query.delete("token");
      const rest = query.toString();
      history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
      return token;
    }
    try { return sessionStorage.getItem(storeKey); } catch (e) { return null; }
  }

  function format(col, value) {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "number") return String(value);
    if (col === "speed_mps") return (value * 3.6).toFixed(1);
    if (col === "distance_m") return (value / 1000).toFixed(2);
    if (col === "energy_kj") return value.toFixed(1);
    return Number.isInteger(value) ? String(value) : value.toFixed(1);
  }

  function cell(tag, text, className) {
    const el = document.createElement(tag);
    el.textContent = text;
    if (className) el.className = className;
    return el;
  }

  let shownCols = "";
  function render(board) {
    const cols = board.cols.filter((c) => !HIDDEN.has(c));
    const order = ["rank", "participant", ...cols.filter((c) => c !== "rank" && c !== "participant")];
    if (order.join() !== shownCols) {
      $("head").replaceChildren(...order.map((c) => cell("th", LABELS[c] || c)));
      shownCols = order.join();
    }
    const index = Object.fromEntries(board.cols.map((c, i) => [c, i]));
    const rows = board.rows || board.top || [];
    $("body").replaceChildren(...rows.map((row) => {
      const tr = document.createElement("tr");
      if (you !== null && row[index.participant] === you) tr.className = "you";
      tr.append(...order.map((c) => cell("td", format(c, row[index[c]]), c === "participant" ? "name" : "")));
      return tr;
    }));
    $("meta").textContent = `${board.phase} · ${board.n} riders · updated ${new Date(board.ts * 1000).toLocaleTimeString()}`;
  }

  function stop(message) {
    $("note").textContent = message;
    $("note").hidden = false;
    $("meta").textContent = "not connected";
  }

  const token = takeToken();
  $("sid").textContent = sid;
  let delay = 1000;

  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const params = new URLSearchParams({ rate: "2", view: "all", format: "json" });
    if (you !== null) params.set("participant", you);
    const url = `${proto}://${location.host}/v1/sessions/${encodeURIComponent(sid)}/board?${params}`;
    const ws = new WebSocket(url, token ? ["pulseline.v1", "bearer." + token] : ["pulseline.v1"]);
    ws.onopen = () => { delay = 1000; $("note").hidden = true; };
    ws.onmessage = (ev) => {
      let board;
      try { board = JSON.parse(ev.data); } catch (e) { return; }
      if (board && board.t === "board" && Array.isArray(board.cols)) render(board);
    };
    ws.onclose = (ev) => {
      if (ev.code in TERMINAL) { stop(TERMINAL[ev.code]); return; }
      $("meta").textContent = "reconnecting…";
      setTimeout(connect, delay * (0.5 + Math.random()));
      delay = Math.min(delay * 2, 15000);
    };
  }

  if (!token) stop("Open this page with a view link (…/view#token=…): ask the instructor or the app for one.");
  else connect();
})();
