// The codec against published MessagePack byte vectors, and round trips.
import { test } from "node:test";
import assert from "node:assert/strict";
import { decode, encode } from "../msgpack.js";

const hex = (bytes) => Buffer.from(bytes).toString("hex");
const VECTORS = [
  [null, "c0"], [false, "c2"], [true, "c3"], [0, "00"], [127, "7f"], [128, "cc80"], [256, "cd0100"],
  [65536, "ce00010000"], [2 ** 32, "cf0000000100000000"], [-1, "ff"], [-32, "e0"], [-33, "d0df"],
  [-129, "d1ff7f"], [-32769, "d2ffff7fff"], [-(2 ** 31) - 1, "d3ffffffff7fffffff"], [1.5, "cb3ff8000000000000"],
  ["", "a0"], ["a", "a161"], ["é", "a2c3a9"], ["x".repeat(32), "d920" + "78".repeat(32)],
  [[], "90"], [[1, 2], "920102"], [{}, "80"], [{ t: "ack" }, "81a174a361636b"],
];

test("encodes the published vectors", () => {
  for (const [value, bytes] of VECTORS) assert.equal(hex(encode(value)), bytes, JSON.stringify(value));
});

test("decodes them back, and float32, bin, ext and 64-bit integers", () => {
  for (const [value, bytes] of VECTORS) assert.deepEqual(decode(Buffer.from(bytes, "hex")), value);
  assert.equal(decode(Buffer.from("ca3fc00000", "hex")), 1.5);
  assert.deepEqual(decode(Buffer.from("c403010203", "hex")), new Uint8Array([1, 2, 3]));
  assert.deepEqual(decode(Buffer.from("d40105", "hex")), { type: 1, data: new Uint8Array([5]) });
  assert.equal(decode(Buffer.from("cfffffffffffffffff", "hex")), 2n ** 64n - 1n);
});

test("round trips large containers and strings", () => {
  const value = { rows: Array.from({ length: 70000 }, (_, i) => [i, i * 0.5, `r${i}`]), s: "ü".repeat(40000) };
  assert.deepEqual(decode(encode(value)), value);
});

test("refuses truncated data with a clear error", () => {
  assert.throws(() => decode(Buffer.from("92 01", "hex".replace(" ", ""))), /truncated/);
  assert.throws(() => decode(Buffer.from("c1", "hex")), /unknown tag/);
});
