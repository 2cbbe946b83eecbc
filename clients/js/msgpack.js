// A small MessagePack codec (https://msgpack.org/ spec): everything pulseline's frames use —
// nil, booleans, integers up to 64 bits, float32/64, str, bin, array, map — and ext read
// as {type, data}. No dependencies, no build step: an ES module for browsers and Node.
// Integers beyond 2^53 decode as BigInt; maps decode as plain objects.

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

class Writer {
  constructor() { this.buf = new Uint8Array(256); this.view = new DataView(this.buf.buffer); this.pos = 0; }
  room(n) {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.buf.subarray(0, this.pos));
    this.buf = grown;
    this.view = new DataView(grown.buffer);
  }
  u8(v) { this.room(1); this.buf[this.pos++] = v; }
  head(tag, size, bits) {  // a tag byte and a big-endian length or value of `bits`
    this.room(1 + bits / 8);
    this.buf[this.pos++] = tag;
    if (bits === 8) this.view.setUint8(this.pos, size);
    else if (bits === 16) this.view.setUint16(this.pos, size);
    else if (bits === 32) this.view.setUint32(this.pos, size);
    this.pos += bits / 8;
  }
  bytes(data) { this.room(data.length); this.buf.set(data, this.pos); this.pos += data.length; }
}

function writeInt(w, v) {
  if (v >= 0) {
    if (v < 128) w.u8(v);
    else if (v < 0x100) w.head(0xcc, v, 8);
    else if (v < 0x10000) w.head(0xcd, v, 16);
    else if (v < 0x100000000) w.head(0xce, v, 32);
    else { w.u8(0xcf); w.room(8); w.view.setBigUint64(w.pos, BigInt(v)); w.pos += 8; }
  } else if (v >= -32) w.u8(v & 0xff);
  else if (v >= -0x80) { w.u8(0xd0); w.room(1); w.view.setInt8(w.pos, v); w.pos += 1; }
  else if (v >= -0x8000) { w.u8(0xd1); w.room(2); w.view.setInt16(w.pos, v); w.pos += 2; }
  else if (v >= -0x80000000) { w.u8(0xd2); w.room(4); w.view.setInt32(w.pos, v); w.pos += 4; }
  else { w.u8(0xd3); w.room(8); w.view.setBigInt64(w.pos, BigInt(v)); w.pos += 8; }
}

function writeSized(w, size, small, tags) {  // small: [tag base, limit]; tags: 8/16/32-bit length tags
  if (small && size < small[1]) w.u8(small[0] | size);
  else if (tags[0] !== null && size < 0x100) w.head(tags[0], size, 8);
  else if (size < 0x10000) w.head(tags[1], size, 16);
  else w.head(tags[2], size, 32);
}

function write(w, value) {
  if (value === null || value === undefined) w.u8(0xc0);
  else if (value === false) w.u8(0xc2);
  else if (value === true) w.u8(0xc3);
  else if (typeof value === "number") {
    if (Number.isSafeInteger(value)) writeInt(w, value);
    else { w.u8(0xcb); w.room(8); w.view.setFloat64(w.pos, value); w.pos += 8; }
  } else if (typeof value === "bigint") {
    if (value >= 0n) { w.u8(0xcf); w.room(8); w.view.setBigUint64(w.pos, value); }
    else { w.u8(0xd3); w.room(8); w.view.setBigInt64(w.pos, value); }
    w.pos += 8;
  } else if (typeof value === "string") {
    const data = utf8.encode(value);
    writeSized(w, data.length, [0xa0, 32], [0xd9, 0xda, 0xdb]);
    w.bytes(data);
  } else if (value instanceof Uint8Array || value instanceof ArrayBuffer) {
    const data = value instanceof ArrayBuffer ? new Uint8Array(value) : value;
    writeSized(w, data.length, null, [0xc4, 0xc5, 0xc6]);
    w.bytes(data);
  } else if (Array.isArray(value)) {
    writeSized(w, value.length, [0x90, 16], [null, 0xdc, 0xdd]);
    for (const item of value) write(w, item);
  } else if (typeof value === "object") {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    writeSized(w, entries.length, [0x80, 16], [null, 0xde, 0xdf]);
    for (const [k, v] of entries) { write(w, k); write(w, v); }
  } else {
    throw new TypeError(`msgpack: cannot encode ${typeof value}`);
  }
}

/** @param {unknown} value @returns {Uint8Array} */
export function encode(value) {
  const w = new Writer();
  write(w, value);
  return w.buf.slice(0, w.pos);
}

class Reader {
  constructor(data) {
    this.buf = ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
      : new Uint8Array(data);  // (a plain view: Node's Buffer slices would stay Buffers)
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    this.pos = 0;
  }
  need(n) { if (this.pos + n > this.buf.length) throw new RangeError("msgpack: truncated data"); }
  take(n) { this.need(n); const out = this.buf.subarray(this.pos, this.pos + n); this.pos += n; return out; }
  num(kind, n) { this.need(n); const v = this.view[kind](this.pos); this.pos += n; return v; }
}

const big = (v) => (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);

function readStr(r, n) { return fromUtf8.decode(r.take(n)); }
function readArray(r, n) { const out = new Array(n); for (let i = 0; i < n; i++) out[i] = read(r); return out; }
function readMap(r, n) {
  const out = {};
  for (let i = 0; i < n; i++) { const k = read(r); out[String(k)] = read(r); }
  return out;
}
function readExt(r, n) { const type = r.num("getInt8", 1); return { type, data: r.take(n).slice() }; }

const FIXED = {
  0xc0: () => null, 0xc2: () => false, 0xc3: () => true,
  0xc4: (r) => r.take(r.num("getUint8", 1)).slice(), 0xc5: (r) => r.take(r.num("getUint16", 2)).slice(),
  0xc6: (r) => r.take(r.num("getUint32", 4)).slice(),
  0xc7: (r) => readExt(r, r.num("getUint8", 1)), 0xc8: (r) => readExt(r, r.num("getUint16", 2)),
  0xc9: (r) => readExt(r, r.num("getUint32", 4)),
  0xca: (r) => r.num("getFloat32", 4), 0xcb: (r) => r.num("getFloat64", 8),
  0xcc: (r) => r.num("getUint8", 1), 0xcd: (r) => r.num("getUint16", 2), 0xce: (r) => r.num("getUint32", 4),
  0xcf: (r) => big(r.num("getBigUint64", 8)),
  0xd0: (r) => r.num("getInt8", 1), 0xd1: (r) => r.num("getInt16", 2), 0xd2: (r) => r.num("getInt32", 4),
  0xd3: (r) => big(r.num("getBigInt64", 8)),
  0xd4: (r) => readExt(r, 1), 0xd5: (r) => readExt(r, 2), 0xd6: (r) => readExt(r, 4), 0xd7: (r) => readExt(r, 8),
  0xd8: (r) => readExt(r, 16),
  0xd9: (r) => readStr(r, r.num("getUint8", 1)), 0xda: (r) => readStr(r, r.num("getUint16", 2)),
  0xdb: (r) => readStr(r, r.num("getUint32", 4)),
  0xdc: (r) => readArray(r, r.num("getUint16", 2)), 0xdd: (r) => readArray(r, r.num("getUint32", 4)),
  0xde: (r) => readMap(r, r.num("getUint16", 2)), 0xdf: (r) => readMap(r, r.num("getUint32", 4)),
};

function read(r) {
  const tag = r.num("getUint8", 1);
  if (tag < 0x80) return tag;
  if (tag < 0x90) return readMap(r, tag & 0x0f);
  if (tag < 0xa0) return readArray(r, tag & 0x0f);
  if (tag < 0xc0) return readStr(r, tag & 0x1f);
  if (tag >= 0xe0) return tag - 0x100;
  const reader = FIXED[tag];
  if (reader === undefined) throw new RangeError(`msgpack: unknown tag 0x${tag.toString(16)}`);
  return reader(r);
}

/** @param {Uint8Array | ArrayBuffer} data @returns {unknown} */
export function decode(data) {
  const r = new Reader(data);
  const value = read(r);
  if (r.pos !== r.buf.length) throw new RangeError("msgpack: extra bytes after the value");
  return value;
}
