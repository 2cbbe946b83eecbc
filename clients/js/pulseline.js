// pulseline's JavaScript client: devices (phones, bridges) and board viewers, speaking
// protocol v1/v1.1 (docs/protocol.md) in msgpack over WebSockets. No framework, no build
// step: an ES module for browsers and Node >= 20 (`node --experimental-websocket`, or pass
// `WebSocket`). Types: pulseline.d.ts. The Python twin is devices/client.py.
//
// DeviceClient: say hello (with a token), number samples per device (seq from 1), keep every
// sample until the server acknowledges it durably (`ack`, or `acks` in a v1.1 board), and
// after any reconnect resend what the `welcome` says is not durable. Rejected samples (an
// `error` with `seqs`) are dropped and reported; `throttle` pauses sending, then resends.
// Reconnects with jittered exponential back-off over several edge URLs; stops on a close
// that retrying cannot fix (4401, 4403, 4404, 4400). A token may be refreshed in-band.
// BoardClient: a viewer's latest-wins boards on /v1/sessions/{id}/board, reconnecting.
import { decode, encode } from "./msgpack.js";

export const TERMINAL_CLOSES = Object.freeze({
  4400: "protocol error", 4401: "unauthorised", 4403: "forbidden", 4404: "unknown session",
});

const socketClass = (given) => {
  const cls = given ?? globalThis.WebSocket;
  if (!cls) throw new Error("no WebSocket here: Node 20 needs --experimental-websocket, or pass { WebSocket }");
  return cls;
};

/** Reconnection with jittered exponential back-off over a list of base URLs. */
class Link {
  constructor({ urls, path, protocols, WebSocket, minDelayMs = 250, maxDelayMs = 15000 }) {
    this.urls = (Array.isArray(urls) ? urls : [urls]).map((u) => u.replace(/^http/, "ws").replace(/\/$/, ""));
    this.path = path;
    this.protocols = protocols;
    this.WebSocket = socketClass(WebSocket);
    this.minDelayMs = minDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.delayMs = minDelayMs;
    this.next = 0;
    this.ws = null;
    this.stopped = false;
    this.timer = null;
  }

  open(handlers) {
    if (this.stopped) return;
    const url = this.urls[this.next % this.urls.length] + this.path();
    this.next += 1;
    const ws = new this.WebSocket(url, this.protocols());
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => { this.delayMs = this.minDelayMs; handlers.open(); };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") return;  // the server speaks msgpack (binary)
      let frame;
      try { frame = decode(ev.data); } catch { return; }
      if (frame && typeof frame === "object") handlers.frame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      const terminal = ev.code in TERMINAL_CLOSES;
      const retry = !this.stopped && !terminal;
      handlers.close(ev.code, ev.reason, retry);
      if (retry) {
        const wait = this.delayMs * (0.5 + Math.random());
        this.delayMs = Math.min(this.delayMs * 2, this.maxDelayMs);
        this.timer = setTimeout(() => this.open(handlers), wait);
      } else {
        this.stopped = true;
      }
    };
  }

  send(frame) {
    if (this.ws && this.ws.readyState === 1) { this.ws.send(encode(frame)); return true; }
    return false;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, "bye");
  }
}

class Emitter {
  constructor() { this.handlers = new Map(); }
  on(type, fn) { (this.handlers.get(type) ?? this.handlers.set(type, []).get(type)).push(fn); return this; }
  emit(type, ...args) { for (const fn of this.handlers.get(type) ?? []) fn(...args); }
}

/** One device's numbering and its unacknowledged samples. */
class DeviceBuffer {
  constructor(binding) {
    this.binding = binding;
    this.seq = 0;  // the last seq given
    this.kept = [];  // rows not yet durable, in seq order
    this.durable = 0;
    this.sent = 0;  // the highest seq written to the current connection
  }
  add(sample) {
    this.seq += 1;
    const row = [this.seq, sample.ts ?? Date.now() / 1000, sample.hr ?? null, sample.power ?? null,
      sample.cadence ?? null, sample.speed ?? null, sample.distance ?? null];
    this.kept.push(row);
    return row;
  }
  settle(seq) {
    if (seq > this.durable) this.durable = seq;
    while (this.kept.length && this.kept[0][0] <= seq) this.kept.shift();
  }
  drop(seqs) { const gone = new Set(seqs); this.kept = this.kept.filter((row) => !gone.has(row[0])); }
  unsent() { return this.kept.filter((row) => row[0] > this.sent); }
}

export class DeviceClient extends Emitter {
  /**
   * @param {import("./pulseline").DeviceClientOptions} options
   */
  constructor({ urls, token, devices, board = null, hub = null, maxBatch = 100, ...linkOptions }) {
    super();
    this.token = token;
    this.board = board;
    this.hub = hub;
    this.maxBatch = maxBatch;
    this.buffers = new Map(devices.map((d) => [d.device, new DeviceBuffer(d)]));
    this.welcomed = false;
    this.pausedUntil = 0;
    this.stats = { sent: 0, acked: 0, rejected: 0, resent: 0, reconnects: 0, throttles: 0 };
    this.link = new Link({ urls, path: () => "/v1/devices", protocols: () => ["pulseline.v1"], ...linkOptions });
    this.connected = false;
  }

  /** Open the connection (and keep it open until close()). */
  connect() {
    this.link.open({
      open: () => this._hello(),
      frame: (frame) => this._on(frame),
      close: (code, reason, retry) => {
        this.connected = false;
        this.welcomed = false;
        if (retry) this.stats.reconnects += 1;
        this.emit("close", { code, reason, retry });
      },
    });
    return this;
  }

  /** Add a sample of `device` (metrics: hr, power, cadence, speed, distance; ts in Unix s). */
  push(device, sample) {
    const buffer = this.buffers.get(device);
    if (!buffer) throw new Error(`device ${device} is not one of this client's`);
    buffer.add(sample);
    this._flush();
    return buffer.seq;
  }

  /** Samples not yet acknowledged, per device. */
  get pending() {
    return Object.fromEntries([...this.buffers].map(([d, b]) => [d, b.kept.length]));
  }

  /** Resolves once every sample pushed so far is durable (or rejected). */
  drained({ timeoutMs = 30000 } = {}) {
    return new Promise((resolve, reject) => {
      const started = Date.now();
      const check = () => {
        if ([...this.buffers.values()].every((b) => b.kept.length === 0)) return resolve();
        if (Date.now() - started > timeoutMs) return reject(new Error(`not drained: ${JSON.stringify(this.pending)}`));
        setTimeout(check, 50);
      };
      check();
    });
  }

  /** A fresh token for the same subject, sent in-band now (and used on reconnects). */
  renew(token) {
    this.token = token;
    this.link.send({ t: "auth", token });
  }

  /** Say bye and close; nothing reconnects after this. */
  close() {
    this.link.send({ t: "bye" });
    this.link.stop();
  }

  /** Drop the connection as a network would (tests, or a known-bad network): it reconnects. */
  drop() {
    if (this.link.ws) this.link.ws.close(4000, "client dropped the connection");
  }

  _hello() {
    this.connected = true;
    const hello = { t: "hello", v: this.board ? 1.1 : 1, token: this.token,
      devices: [...this.buffers.values()].map((b) => b.binding) };
    if (this.hub) hello.hub = this.hub;
    if (this.board) hello.board = this.board;
    this.link.send(hello);
  }

  _on(frame) {
    switch (frame.t) {
      case "welcome": return this._welcome(frame);
      case "ack": return this._acks(frame.acks ?? {});
      case "board":
        if (frame.acks) this._acks(frame.acks);
        return this.emit("board", frame);
      case "error": return this._error(frame);
      case "throttle":
        this.stats.throttles += 1;
        this.pausedUntil = Date.now() + (frame.retry_after_ms ?? 1000);
        for (const b of this.buffers.values()) if (!frame.device || frame.device === b.binding.device) b.sent = b.durable;
        setTimeout(() => this._flush(), (frame.retry_after_ms ?? 1000) + 10);
        return this.emit("throttle", frame);
      case "token_expiring": case "auth_ok": case "queue":
        return this.emit(frame.t, frame);
      default:
        return this.emit("frame", frame);
    }
  }

  _welcome(frame) {
    for (const [device, seq] of Object.entries(frame.devices ?? {})) {
      const buffer = this.buffers.get(device);
      if (!buffer) continue;
      buffer.settle(seq);
      if (buffer.seq < seq) buffer.seq = seq;  // a fresh client resumes numbering after the durable seq
      this.stats.resent += buffer.kept.filter((row) => row[0] <= buffer.sent).length;
      buffer.sent = seq;  // everything after it goes again
    }
    this.welcomed = true;
    this.emit("welcome", frame);
    this._flush();
  }

  _acks(acks) {
    for (const [device, seq] of Object.entries(acks)) {
      const buffer = this.buffers.get(device);
      if (!buffer) continue;
      const before = buffer.kept.length;
      buffer.settle(seq);
      this.stats.acked += before - buffer.kept.length;
    }
    this.emit("ack", acks);
  }

  _error(frame) {
    if (frame.code === "token_expiring") return this.emit("token_expiring", frame);
    const buffer = frame.device ? this.buffers.get(frame.device) : null;
    if (buffer && Array.isArray(frame.seqs)) {
      buffer.drop(frame.seqs);
      this.stats.rejected += frame.seqs.length;
    }
    this.emit("error", frame);
  }

  _flush() {
    if (!this.connected || !this.welcomed || Date.now() < this.pausedUntil) return;
    for (const buffer of this.buffers.values()) {
      const rows = buffer.unsent();
      for (let i = 0; i < rows.length; i += this.maxBatch) {
        const batch = rows.slice(i, i + this.maxBatch);
        if (!this.link.send({ t: "samples", device: buffer.binding.device, samples: batch })) return;
        buffer.sent = batch[batch.length - 1][0];
        this.stats.sent += batch.length;
      }
    }
  }
}

export class BoardClient extends Emitter {
  /**
   * @param {import("./pulseline").BoardClientOptions} options
   */
  constructor({ urls, session, token, rate = 1, view = "top", participant = null, ...linkOptions }) {
    super();
    this.token = token;
    const params = new URLSearchParams({ rate: String(rate), view });
    if (participant !== null && participant !== undefined) params.set("participant", participant);
    this.link = new Link({
      urls, path: () => `/v1/sessions/${encodeURIComponent(session)}/board?${params}`,
      protocols: () => ["pulseline.v1", `bearer.${this.token}`], ...linkOptions,
    });
    this.board = null;
  }

  connect() {
    this.link.open({
      open: () => this.emit("open"),
      frame: (frame) => {
        if (frame.t !== "board") return;
        this.board = frame;
        this.emit("board", frame);
      },
      close: (code, reason, retry) => this.emit("close", { code, reason, retry }),
    });
    return this;
  }

  /** A fresh token (used for the next connection, and sent in-band now). */
  renew(token) {
    this.token = token;
    this.link.send({ t: "auth", token });
  }

  close() { this.link.stop(); }
}

/** Rows of a v1 board as objects keyed by its `cols` (columns are only ever added at the end). */
export function rows(board, key = "top") {
  const cols = board.cols ?? [];
  return (board[key] ?? []).map((row) => Object.fromEntries(cols.map((c, i) => [c, row[i]])));
}
