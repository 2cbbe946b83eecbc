// The client against a real edge (started by tests/clients/test_js_client.py, which passes
// PULSELINE_JS_TEST: the edge URL, a live session and tokens). Without it: skipped.
import { test } from "node:test";
import assert from "node:assert/strict";
import { BoardClient, DeviceClient, rows } from "../pulseline.js";

const config = process.env.PULSELINE_JS_TEST ? JSON.parse(process.env.PULSELINE_JS_TEST) : null;
const skip = config ? false : "needs a running edge: run tests/clients/test_js_client.py";

const until = (emitter, type, accept = () => true, timeoutMs = 30000) => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`no ${type} in ${timeoutMs} ms`)), timeoutMs);
  emitter.on(type, (value) => { if (accept(value)) { clearTimeout(timer); resolve(value); } });
});

test("a rider's samples are all acknowledged across a dropped connection, a rejected one reported", { skip }, async () => {
  const { url, session, deviceToken } = config;
  const client = new DeviceClient({
    urls: [url], token: deviceToken, board: { rate: 2 },
    devices: [{ device: "js-strap", participant: "ann", session }],
  });
  const boards = [];
  const errors = [];
  client.on("board", (b) => boards.push(b)).on("error", (e) => errors.push(e));
  const t0 = Date.now() / 1000 - 60;
  let i = 0;
  const ride = (n) => { for (const end = i + n; i < end;) { i += 1; client.push("js-strap", { ts: t0 + i, hr: 120 + (i % 20), power: 200, cadence: 85, speed: 9, distance: i * 9 }); } };
  ride(10);  // kept before the connection exists
  client.connect();
  await until(client, "welcome");
  await client.drained();
  ride(10);
  client.drop();  // as a network would: the client reconnects and resends what is not durable
  ride(10);
  client.push("js-strap", { ts: t0 + 31, hr: 999 });  // out of range: rejected, reported, dropped
  await until(client, "welcome");
  await client.drained();
  assert.ok(client.stats.reconnects >= 1, JSON.stringify(client.stats));
  assert.equal(client.stats.rejected, 1);
  assert.ok(errors.some((e) => e.code === "out_of_range" && e.seqs.includes(31)), JSON.stringify(errors));
  await until(client, "board", (b) => Array.isArray(b.me) && b.me[5] >= 30, 30000);  // v1.1: its own row, 30 applied
  assert.ok(boards.length > 0 && boards.every((b) => b.session === session));
  client.close();
});

test("a viewer gets boards that name the class's riders", { skip }, async () => {
  const { url, session, viewerToken } = config;
  const viewer = new BoardClient({ urls: url, session, token: viewerToken, rate: 2, view: "all" }).connect();
  const board = await until(viewer, "board", (b) => rows(b).some((r) => r.participant === "ann"));
  assert.equal(board.session, session);
  assert.ok(board.cols.includes("energy_kj") && rows(board, "rows").length >= 1);
  viewer.close();
});

test("a refused token ends the connection without retrying", { skip }, async () => {
  const { url, session } = config;
  const viewer = new BoardClient({ urls: url, session, token: "not-a-token" }).connect();
  const closed = await until(viewer, "close");
  assert.equal(closed.code, 4401);
  assert.equal(closed.retry, false);
});
