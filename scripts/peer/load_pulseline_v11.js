'use strict';
// Load generator for the "live_class" peer benchmark, pulseline side, in protocol v1.1.
//
// A copy of ../shared/peers/colyseus/load_pulseline.js (the team's v1 loader) with only the
// wire format changed: ONE WebSocket per rider. The hello asks for the board
// ("v": 1.1, "board": {"rate": R}); boards arrive on the device socket in the compact v1.1
// form (me = [rank, output (0.1 kJ), power, hr, cadence, samples, last_ts]) with the acks
// inside them. Everything else (schedule, measurements, JSON fields) is unchanged. Run it by
// copying the peer folder and replacing its load_pulseline.js with this file
// (docs/benchmarks.md, "Same loader as Colyseus").
//
// The v1 description follows.
//
//   node load_pulseline.js --port P --clients N --rooms R --seconds S --warmup W
//        --data-dir D [--server-pid PID] [--host 127.0.0.1] [--join-concurrency 50] [--drain 5]
//
// The same workload and the same JSON fields as load.js (the Colyseus loader), spoken in
// pulseline's protocol (docs/protocol.md in the project):
//   * R sessions ("classes") are created over HTTP with an operator token and set live;
//     N riders are assigned round-robin and joined with POST /v1/sessions/{id}/participants.
//   * Per rider, TWO WebSockets (pulseline has no per-rider board on the device socket):
//       - a device connection, ws://HOST:PORT/v1/devices: hello (device token) -> welcome,
//         then one `samples` frame per second; the server answers with `ack` frames (<= 1/s);
//       - a board connection, /v1/sessions/{id}/board?rate=1&participant=P&token=<participant
//         token>: the shared top-10 plus `you`, the rider's own row (rank, kJ, last_ts, samples).
//   * Device k of the M joined devices sends at phase k/M of every second (absolute schedule),
//     exactly as load.js. Sample = [seq, ts, hr, pw, cad]; seq starts at 1 (protocol rule), ts is
//     the device wall clock in Unix seconds (float; load.js sends ms), same hr/pw/cad formulas.
// For every board received in the window:
//   latency   = receive time - last_ts of the rider's own row (the ts of the newest own
//               sample the board reflects) -- the same definition as load.js (`a`)
//   board_age = receive time - board `ts` (edge wall clock when the session actor's tick
//               returned this board to the edge; includes the wait for the viewer's 1 Hz slot)
// Server CPU: not reported by the server. Read from /proc for every process of the stack
// started by `pulseline up` (its process tree / session: edge, Ray workers and actors, raylet,
// gcs, agents, redis-server), at window start and end, with a per-part split.
// Tokens: development HS256 JWTs minted here with the data dir's dev-secret and the claim layout
// of api/auth.py::mint_token in the project (iss pulseline-dev, aud, iat, exp, sub, jti, kind, ...).
// Prints one JSON object on stdout. Everything is time-bounded. Loopback only.

const { performance, monitorEventLoopDelay } = require('node:perf_hooks');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const WebSocket = require('ws');
const { Packr, Unpackr } = require('msgpackr');

function arg(name, def) {
  const i = process.argv.indexOf('--' + name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}
const HOST = arg('host', '127.0.0.1');
const PORT = Number(arg('port', 8000));
const N = Number(arg('clients', 100));
const R = Math.max(1, Math.min(N, Number(arg('rooms', 5))));
const S = Number(arg('seconds', 30));
const W = Number(arg('warmup', 5));
const JOIN_CONC = Number(arg('join-concurrency', 50));
const JOIN_TIMEOUT_MS = Number(arg('join-timeout', 20)) * 1000;     // per rider step (HTTP join, hello, first board)
const CREATE_TIMEOUT_MS = Number(arg('create-timeout', 120)) * 1000; // per session (starts a Ray actor)
const JOIN_PHASE_MS = Number(arg('join-phase-limit', 300)) * 1000;   // whole join phase
const DRAIN_MS = Number(arg('drain', 5)) * 1000;
const CREATE_SPREAD_MS = Number(arg('create-spread', 1000));         // session i created at i*spread/R ms
const BOARD_RATE = Number(arg('board-rate', 1));                      // boards per second per rider
const BOARD_TOKEN = arg('board-token', 'participant');                // participant | operator
const DATA_DIR = arg('data-dir', null);
const SECRET_FILE = arg('secret-file', DATA_DIR ? path.join(DATA_DIR, 'dev-secret') : null);
const AUDIENCE = arg('audience', process.env.PULSELINE_AUTH_AUDIENCE || 'pulseline');
const TOKEN_TTL_S = Number(arg('token-ttl', 4 * 3600));
const SERVER_PID = Number(arg('server-pid', 0)) || null;
const PREFIX = arg('session-prefix', 'pb' + Date.now().toString(36));
const TICK_MS = 2;

if (HOST !== '127.0.0.1' && HOST !== 'localhost' && HOST !== '::1') {
  console.error('refusing a non-loopback host: ' + HOST);
  process.exit(2);
}
if (BOARD_TOKEN !== 'participant' && BOARD_TOKEN !== 'operator') {
  console.error('--board-token must be participant or operator');
  process.exit(2);
}
const BASE = `http://${HOST}:${PORT}`;
const WSBASE = `ws://${HOST}:${PORT}`;

const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error('[load-pl]', ...a);

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([
    p,
    new Promise((_, rej) => { t = setTimeout(() => rej(new Error(what + ' timed out after ' + ms + ' ms')), ms); }),
  ]).finally(() => clearTimeout(t));
}

function pctl(arr, p) {
  if (arr.length === 0) return null;
  const i = Math.min(arr.length - 1, Math.max(0, Math.ceil(p * arr.length) - 1));
  return +arr[i].toFixed(3);
}
function summary(values) {
  const a = Float64Array.from(values).sort();
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += a[i];
  return {
    n: a.length,
    mean: a.length ? +(sum / a.length).toFixed(3) : null,
    p50: pctl(a, 0.5), p90: pctl(a, 0.9), p99: pctl(a, 0.99), p999: pctl(a, 0.999),
    max: a.length ? +a[a.length - 1].toFixed(3) : null,
  };
}

// ---- machine-wide CPU and pressure (same as load.js) -----------------------------------
function procStat() {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const idle = f[3] + (f[4] || 0);
    const busy = f[0] + f[1] + f[2] + (f[5] || 0) + (f[6] || 0) + (f[7] || 0);
    return { busy, total: busy + idle, steal: f[7] || 0 };
  } catch (_) { return null; }
}
function cpuPressureUs() {
  try {
    const m = /some .*total=(\d+)/.exec(fs.readFileSync('/proc/pressure/cpu', 'utf8'));
    return m ? Number(m[1]) : null;
  } catch (_) { return null; }
}

// ---- the server stack's CPU from /proc ---------------------------------------------------
function getconf(name, def) {
  try { return Number(execFileSync('getconf', [name], { encoding: 'utf8' }).trim()) || def; } catch (_) { return def; }
}
const CLK_TCK = getconf('CLK_TCK', 100);
const PAGE = getconf('PAGESIZE', 4096);

function readProcStat(pid) {
  // /proc/PID/stat: "pid (comm) state ppid pgrp session ... utime stime ... starttime vsize rss"
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const close = s.lastIndexOf(')');
  const comm = s.slice(s.indexOf('(') + 1, close);
  const f = s.slice(close + 2).split(' ');
  return {
    pid, comm, ppid: Number(f[1]), pgrp: Number(f[2]), sid: Number(f[3]),
    cpuTicks: Number(f[11]) + Number(f[12]), start: Number(f[19]), rssBytes: Number(f[21]) * PAGE,
  };
}
function cmdlineOf(pid) {
  try { return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim(); } catch (_) { return ''; }
}
// Parts: edge (the `pulseline up` process: uvicorn edge + Ray driver threads), session_actors
// (Ray workers running SessionActor), ray_workers_other (idle or starting Ray workers), ray_system
// (raylet, gcs_server, dashboard and its agents, monitors), redis (the embedded redis-server).
function classify(p, root) {
  if (p.pid === root) return ['edge', 'edge'];
  const cmd = p.cmd || '';
  const words = cmd.split(' ');
  const exe = path.basename(words[0] || '');
  if (exe === 'redis-server' || p.comm === 'redis-server') return ['redis', 'redis-server'];
  if (exe === 'raylet' || exe === 'gcs_server') return ['ray_system', exe];
  if (cmd.startsWith('ray::')) {
    if (/SessionActor/.test(words[0])) return ['session_actors', 'SessionActor'];
    if (/DashboardAgent|RuntimeEnvAgent/.test(words[0])) return ['ray_system', words[0].slice(5)];
    return ['ray_workers_other', words[0]];                       // ray::IDLE and other workers
  }
  // python processes: name them by their script
  const script = words.slice(1).find((w) => w.endsWith('.py'));
  if (script) {
    const name = path.basename(script, '.py');
    if (name === 'default_worker' || name === 'setup_worker') return ['ray_workers_other', name];
    return ['ray_system', name === 'main' ? 'runtime_env_agent' : name]; // dashboard, log_monitor, monitor, agent
  }
  return ['other', p.comm];
}
// Every process of the stack: the root's own session (run_pulseline.sh starts it with setsid)
// plus its process tree (in case something left the session). Never anything else.
function stackSnapshot(root) {
  const all = new Map();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try { const p = readProcStat(Number(name)); all.set(p.pid, p); } catch (_) { /* gone */ }
  }
  const mine = new Map();
  if (!all.has(root)) return { at: now(), procs: mine };
  const children = new Map();
  for (const p of all.values()) {
    if (!children.has(p.ppid)) children.set(p.ppid, []);
    children.get(p.ppid).push(p.pid);
  }
  const stack = [root];
  while (stack.length) {
    const pid = stack.pop();
    if (mine.has(pid) || !all.has(pid)) continue;
    mine.set(pid, all.get(pid));
    for (const c of children.get(pid) || []) stack.push(c);
  }
  for (const p of all.values()) if (p.sid === root && !mine.has(p.pid)) mine.set(p.pid, p);
  for (const p of mine.values()) p.cmd = cmdlineOf(p.pid);
  return { at: now(), procs: mine };
}
function edgeThreads(root) {
  const out = new Map();
  try {
    for (const tid of fs.readdirSync(`/proc/${root}/task`)) {
      try {
        const s = fs.readFileSync(`/proc/${root}/task/${tid}/stat`, 'utf8');
        const close = s.lastIndexOf(')');
        const f = s.slice(close + 2).split(' ');
        out.set(tid, { comm: s.slice(s.indexOf('(') + 1, close), ticks: Number(f[11]) + Number(f[12]) });
      } catch (_) { /* gone */ }
    }
  } catch (_) { /* gone */ }
  return out;
}
function stackCpu(a, b, root, threadsA, threadsB) {
  const wall = (b.at - a.at) / 1000;
  const parts = {};
  const sys = {};
  let total = 0, rss = 0, n = 0;
  for (const p of b.procs.values()) {
    const before = a.procs.get(p.pid);
    const used = before && before.start === p.start ? p.cpuTicks - before.cpuTicks : p.cpuTicks; // new in the window: all of it
    const sec = used / CLK_TCK;
    const [part, name] = classify(p, root);
    const e = parts[part] || (parts[part] = { cpu_cores: 0, cpu_s: 0, procs: 0, rss_mb: 0 });
    e.cpu_s += sec; e.procs++; e.rss_mb += p.rssBytes / 1048576;
    if (part === 'ray_system') sys[name] = (sys[name] || 0) + sec;
    total += sec; rss += p.rssBytes; n++;
  }
  let gone = 0;
  for (const p of a.procs.values()) if (!b.procs.has(p.pid)) gone++;
  for (const e of Object.values(parts)) {
    e.cpu_cores = +(e.cpu_s / wall).toFixed(3); e.cpu_s = +e.cpu_s.toFixed(2); e.rss_mb = +e.rss_mb.toFixed(1);
  }
  const sysCores = {};
  for (const [k, v] of Object.entries(sys)) sysCores[k] = +(v / wall).toFixed(3);
  const threads = {};
  for (const [tid, t] of threadsB) {
    const t0 = threadsA.get(tid);
    const used = (t.ticks - (t0 ? t0.ticks : 0)) / CLK_TCK;
    threads[t.comm] = (threads[t.comm] || 0) + used;
  }
  const topThreads = Object.entries(threads).sort((x, y) => y[1] - x[1]).slice(0, 8)
    .filter(([, v]) => v > 0).map(([k, v]) => [k, +(v / wall).toFixed(3)]);
  return {
    wall_s: +wall.toFixed(3), cpu_s: +total.toFixed(2), cpu_cores: +(total / wall).toFixed(3),
    rss_mb_sum: +(rss / 1048576).toFixed(1), processes: n, processes_gone_in_window: gone,
    parts, ray_system_cores: sysCores, edge_threads_cores: topThreads,
  };
}

// ---- /metrics of the edge (Prometheus text), read at window start and end ---------------
function parseMetrics(text) {
  const m = new Map();
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const i = line.lastIndexOf(' ');
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}
function metricsDelta(a, b) {
  const d = (k) => (b.has(k) ? b.get(k) - (a.get(k) || 0) : null);
  const ticks = d('pulseline_tick_seconds_count');
  const tickSum = d('pulseline_tick_seconds_sum');
  // tick duration percentiles from the histogram buckets (upper bound of the bucket)
  const buckets = [];
  for (const [k, v] of b) {
    const mm = /^pulseline_tick_seconds_bucket\{le="([^"]+)"\}$/.exec(k);
    if (mm) buckets.push([mm[1] === '+Inf' ? Infinity : Number(mm[1]), v - (a.get(k) || 0)]);
  }
  buckets.sort((x, y) => x[0] - y[0]);
  const q = (p) => {
    if (!ticks) return null;
    for (const [le, c] of buckets) if (c >= p * ticks) return le === Infinity ? '>2500' : +(le * 1000).toFixed(1);
    return null;
  };
  return {
    samples_received: d('pulseline_samples_total{outcome="accepted"}'),
    samples_rejected: d('pulseline_samples_total{outcome="rejected"}'),
    samples_throttled: d('pulseline_samples_total{outcome="throttled"}'),
    boards_sent: d('pulseline_boards_sent_total'),
    session_ticks: ticks,
    tick_ms: { mean: ticks ? +((tickSum / ticks) * 1000).toFixed(3) : null, p50_le: q(0.5), p99_le: q(0.99) },
    tick_errors: d('pulseline_tick_errors_total'),
    resyncs: d('pulseline_resyncs_total'),
    device_connections: b.get('pulseline_connections{kind="device"}') ?? null,
  };
}

// ---- development tokens (HS256), claim layout of api/auth.py::mint_token -----------------
let SECRET = null;
const JWT_HEADER = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url');
function mint(kind, claims) {
  const iat = Math.floor(Date.now() / 1000);
  const def = claims.device || claims.hub || claims.participant || 'operator';
  const payload = {
    iss: 'pulseline-dev', aud: AUDIENCE, iat, exp: iat + TOKEN_TTL_S, sub: `${kind}:${def}`,
    jti: crypto.randomBytes(8).toString('hex'), kind, ...claims,
  };
  const body = JWT_HEADER + '.' + Buffer.from(JSON.stringify(payload)).toString('base64url');
  return body + '.' + crypto.createHmac('sha256', SECRET).update(body).digest('base64url');
}

// ---- msgpack ---------------------------------------------------------------------------
const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true });

// ---------------------------------------------------------------------------------------
const errors = { join: 0, leave: 0, drop: 0, room_error: 0, send: 0, stats: 0, throttle: 0 };
const errorSamples = [];
function err(kind, e) {
  errors[kind]++;
  if (errorSamples.length < 10) errorSamples.push(kind + ': ' + (e && e.message ? e.message : String(e)));
}

let measuring = false;
let measureStart = 0;
let measureEnd = Infinity;
const latency = [];
const boardAge = [];
let boardsReceived = 0;
let boardsTotal = 0;
let boardsWithoutOwnRow = 0;
let staleBoards = 0;
let missingBoards = 0;
let samplesSentWindow = 0;
let samplesSentTotal = 0;
let acksReceived = 0;
const bytes = { board_in: 0, boards: 0, device_in: 0, device_frames_in: 0, samples_out: 0, samples_frames: 0 };
const sendLag = [];
const framesIn = {};
let colLastTs = -1, colSamples = -1, colRank = -1, colEnergy = -1;

function makeDevice(i) {
  const base = 120 + ((i * 7919) % 161);
  const cls = i % R;
  return {
    i, cls, session: null, participant: 'rider' + i, device: 'dev' + i,
    seq: -1,            // 0-based index of the last sample sent (wire seq = seq + 1), as load.js
    acked: 0, lastBoard: null, lastBoardAt: 0, lastQ: -1,
    base, hr: 110 + (i % 60), cad: 75 + (i % 25), due: 0, alive: false, failed: false, dws: null, bws: null,
  };
}

function onBoard(d, f) {
  const t = now();
  boardsTotal++;
  if (colLastTs < 0 && Array.isArray(f.cols)) {
    colLastTs = f.cols.indexOf('last_ts'); colSamples = f.cols.indexOf('samples');
    colRank = f.cols.indexOf('rank'); colEnergy = f.cols.indexOf('energy_kj');
  }
  const me = f.me;  // v1.1: [rank, output (0.1 kJ), power_w, hr_bpm, cadence_rpm, samples, last_ts]
  if (!me) boardsWithoutOwnRow++;
  const c = me ? me[5] || 0 : 0;
  const b = {
    t: f.ts * 1000,                                   // edge wall clock, ms (board handed to the edge)
    k: f.version,
    a: me && me[6] != null ? me[6] * 1000 : 0,        // newest own device ts reflected, ms
    c,                                                // own samples reflected (count)
    q: c - 1,                                         // newest own sample reflected, 0-based like load.js
    r: me ? me[0] : null, of: f.n, e: me ? me[1] / 10 : null,
  };
  if (measuring && t >= measureStart && t < measureEnd) {
    boardsReceived++;
    boardAge.push(t - b.t);
    if (b.a > 0) latency.push(t - b.a);
    if (b.q <= d.lastQ) staleBoards++;
    // versions skip by design (latest-wins); a missed board is a gap of > 1.5 board periods
    const period = 1000 / BOARD_RATE;
    if (d.lastBoardAt > 0 && t - d.lastBoardAt > 1.5 * period) missingBoards += Math.max(1, Math.round((t - d.lastBoardAt) / period) - 1);
  }
  d.lastBoardAt = t;
  d.lastQ = b.q;
  d.lastBoard = b;
}

let shuttingDown = false;

async function http(method, urlPath, body, token, timeoutMs) {
  const res = await fetch(BASE + urlPath, {
    method,
    headers: { 'content-type': 'application/json', authorization: 'Bearer ' + token },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  if (res.status >= 300) throw new Error(`${method} ${urlPath}: ${res.status} ${text.slice(0, 200)}`);
  return text ? JSON.parse(text) : null;
}

// Device connection: hello -> welcome. Resolves when welcomed.
function openDevice(d) {
  return new Promise((resolve, reject) => {
    let welcomed = false;
    const ws = new WebSocket(`${WSBASE}/v1/devices`, { perMessageDeflate: false });
    d.dws = ws;
    ws.on('open', () => {
      const token = mint('device', { sessions: [d.session], participant: d.participant, device: d.device });
      ws.send(packr.pack({ t: 'hello', v: 1.1, board: { rate: BOARD_RATE },
        devices: [{ device: d.device, participant: d.participant, session: d.session }], token }));
    });
    ws.on('message', (data) => {
      bytes.device_in += data.length; bytes.device_frames_in++;
      let f;
      try { f = unpackr.unpack(data); } catch (e) { err('room_error', e); return; }
      const kind = f && f.t;
      framesIn[kind] = (framesIn[kind] || 0) + 1;
      if (kind === 'board') {
        bytes.board_in += data.length; bytes.boards++;
        if (f.acks) {
          acksReceived++;
          const s = f.acks[d.device];
          if (s > d.acked) d.acked = s;
        }
        onBoard(d, f);
        d.boardSeen = true;  // a board may come before the welcome (docs/protocol.md)
        if (d.firstBoard) { d.firstBoard(); d.firstBoard = null; }
      } else if (kind === 'ack') {
        acksReceived++;
        const s = f.acks && f.acks[d.device];
        if (s > d.acked) d.acked = s;
      } else if (kind === 'welcome') {
        const s = f.devices && f.devices[d.device];
        if (s > d.acked) d.acked = s;
        if (!welcomed) { welcomed = true; resolve(); }
      } else if (kind === 'throttle') {
        err('throttle', new Error(`${d.device}: ${f.reason}`));
      } else if (kind === 'error') {
        if (f.code !== 'token_expiring') err('room_error', new Error(`${d.device}: ${f.code} ${f.message}`));
      }
    });
    ws.on('close', (code, reason) => {
      if (!welcomed) { reject(new Error(`device socket closed before welcome: ${code} ${reason}`)); return; }
      if (!shuttingDown && !d.failed) err('drop', new Error(`${d.device} device socket closed: ${code} ${reason}`));
      d.alive = false;
    });
    ws.on('error', (e) => { if (!welcomed) reject(e); else if (!shuttingDown && !d.failed) err('drop', e); });
  });
}

// v1.1: no board connection; resolves on the first board on the device socket.
function firstBoard(d) {
  return new Promise((resolve) => { if (d.boardSeen) resolve(); else d.firstBoard = resolve; });
}

// (v1's board connection, unused in v1.1)
function openBoard(d) {
  return new Promise((resolve, reject) => {
    let first = false;
    const token = BOARD_TOKEN === 'participant'
      ? mint('participant', { sessions: [d.session], participant: d.participant })
      : OPERATOR_TOKEN;
    const url = `${WSBASE}/v1/sessions/${encodeURIComponent(d.session)}/board?rate=${BOARD_RATE}`
      + `&participant=${encodeURIComponent(d.participant)}&token=${token}`;
    const ws = new WebSocket(url, { perMessageDeflate: false });
    d.bws = ws;
    ws.on('message', (data) => {
      bytes.board_in += data.length; bytes.boards++;
      let f;
      try { f = unpackr.unpack(data); } catch (e) { err('room_error', e); return; }
      if (f && f.t === 'board') {
        onBoard(d, f);
        if (!first) { first = true; resolve(); }
      } else {
        framesIn[f && f.t] = (framesIn[f && f.t] || 0) + 1;
        if (f && f.t === 'error' && f.code !== 'token_expiring') err('room_error', new Error(`board ${d.participant}: ${f.code}`));
      }
    });
    ws.on('close', (code, reason) => {
      if (!first) { reject(new Error(`board socket closed before the first board: ${code} ${reason}`)); return; }
      if (!shuttingDown && !d.failed) { err('leave', new Error(`${d.participant} board socket closed: ${code} ${reason}`)); d.alive = false; }
    });
    ws.on('error', (e) => { if (!first) reject(e); else if (!shuttingDown && !d.failed) err('drop', e); });
  });
}

let OPERATOR_TOKEN = null;

function pkgVersion(name) {
  try { return JSON.parse(fs.readFileSync(path.join(__dirname, 'node_modules', name, 'package.json'), 'utf8')).version; }
  catch (_) { return null; }
}

async function main() {
  const wallStart = now();
  if (!SECRET_FILE) throw new Error('--data-dir (or --secret-file) is required: tokens are signed with its dev-secret');
  SECRET = fs.readFileSync(SECRET_FILE, 'utf8').trim(); // api/auth.py: path.read_bytes().strip()
  OPERATOR_TOKEN = mint('operator', {});
  const devices = [];
  for (let i = 0; i < N; i++) devices.push(makeDevice(i));

  // ---- join phase: sessions (sequential, spaced), then riders in parallel -------------
  const joinStart = now();
  const joinDeadline = joinStart + JOIN_PHASE_MS;
  const sessionIds = new Array(R);
  for (let r = 0; r < R; r++) {
    const at = joinStart + (r * CREATE_SPREAD_MS) / R;
    if (now() < at) await sleep(at - now());
    const sid = `${PREFIX}-c${r}`;
    try {
      await http('POST', '/v1/sessions', { id: sid }, OPERATOR_TOKEN, CREATE_TIMEOUT_MS);
      sessionIds[r] = sid;
    } catch (e) { err('join', e); }
  }
  const sessionsSeconds = (now() - joinStart) / 1000;
  let next = 0;
  async function worker() {
    while (next < N && now() < joinDeadline) {
      const d = devices[next++];
      d.session = sessionIds[d.cls];
      if (!d.session) { err('join', new Error('session for class ' + d.cls + ' missing')); continue; }
      try {
        await http('POST', `/v1/sessions/${d.session}/participants`, { participant: d.participant }, OPERATOR_TOKEN, JOIN_TIMEOUT_MS);
        await withTimeout(openDevice(d), JOIN_TIMEOUT_MS, 'device hello');
        await withTimeout(firstBoard(d), JOIN_TIMEOUT_MS, 'first board');
        d.alive = true;
      } catch (e) {
        err('join', e);
        d.failed = true;
        for (const ws of [d.dws, d.bws]) { try { if (ws) ws.terminate(); } catch (_) { /* ignore */ } }
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(JOIN_CONC, N) }, worker));
  for (const sid of sessionIds.filter(Boolean)) {
    try { await http('POST', `/v1/sessions/${sid}/phase`, { phase: 'live' }, OPERATOR_TOKEN, JOIN_TIMEOUT_MS); }
    catch (e) { err('join', e); }
  }
  const joinSeconds = (now() - joinStart) / 1000;
  const joined = devices.filter((d) => d.alive);
  log(`joined ${joined.length}/${N} riders into ${sessionIds.filter(Boolean).length}/${R} sessions in ${joinSeconds.toFixed(1)} s`
    + ` (sessions ${sessionsSeconds.toFixed(1)} s)`);

  async function scrapeMetrics() {
    try { return parseMetrics(await (await fetch(BASE + '/metrics', { headers: { authorization: 'Bearer ' + OPERATOR_TOKEN }, signal: AbortSignal.timeout(5000) })).text()); }
    catch (e) { err('stats', e); return null; }
  }

  // ---- send schedule: device k (of the joined ones) at phase k/M of each second --------
  const M = joined.length;
  const t0 = now() + 200;
  for (let k = 0; k < M; k++) joined[k].due = t0 + (k * 1000) / M;
  measureStart = t0 + W * 1000;
  measureEnd = measureStart + S * 1000;
  const sendUntil = measureEnd;
  let ptr = 0;
  const eld = monitorEventLoopDelay({ resolution: 10 });

  function sendDue() {
    const t = now();
    if (t >= sendUntil) return;
    let guard = M;
    while (guard-- > 0 && M > 0) {
      const d = joined[ptr];
      if (d.due > t) break;
      if (d.alive) {
        const seq = ++d.seq;
        const ts = now();
        try {
          if (d.dws.readyState !== WebSocket.OPEN) throw new Error('device socket not open');
          const frame = packr.pack({
            t: 'samples', device: d.device,
            samples: [[seq + 1, ts / 1000,
              d.hr + ((seq * 13) % 7),
              d.base + ((seq * 31 + d.i) % 41) - 20,
              d.cad + ((seq * 17) % 5)]],
          });
          d.dws.send(frame);
          bytes.samples_out += frame.length; bytes.samples_frames++;
          samplesSentTotal++;
          if (measuring && ts >= measureStart) { samplesSentWindow++; sendLag.push(ts - d.due); }
        } catch (e) { d.seq--; err('send', e); }
      }
      d.due += 1000;
      ptr = (ptr + 1) % M;
    }
  }

  const timer = setInterval(sendDue, TICK_MS);
  await sleep(Math.max(0, measureStart - now()));
  measuring = true;
  const cpu0 = process.cpuUsage();
  const ps0 = procStat();
  const pr0 = cpuPressureUs();
  eld.enable();
  const mt0 = now();
  const stack0 = SERVER_PID ? stackSnapshot(SERVER_PID) : null;
  const thr0 = SERVER_PID ? edgeThreads(SERVER_PID) : null;
  const met0 = await scrapeMetrics();
  while (now() < measureEnd) await sleep(Math.min(250, Math.max(1, measureEnd - now())));
  const stack1 = SERVER_PID ? stackSnapshot(SERVER_PID) : null;
  const thr1 = SERVER_PID ? edgeThreads(SERVER_PID) : null;
  const cpu = process.cpuUsage(cpu0);
  const ps1 = procStat();
  const pr1 = cpuPressureUs();
  const mwall = (now() - mt0) / 1000;
  eld.disable();
  const met1 = await scrapeMetrics();
  clearInterval(timer);

  let serverWindow = null;
  if (stack0 && stack1 && stack1.procs.size > 0) {
    serverWindow = stackCpu(stack0, stack1, SERVER_PID, thr0, thr1);
    serverWindow.cpu_source = '/proc utime+stime of every process of the pulseline up session/tree';
    if (met0 && met1) Object.assign(serverWindow, metricsDelta(met0, met1));
  } else {
    err('stats', new Error(SERVER_PID ? 'server process ' + SERVER_PID + ' not found' : 'no --server-pid: server CPU unknown'));
  }

  // ---- drain: wait (bounded) until every device's last board reflects its last sample ---
  const drainDeadline = now() + DRAIN_MS;
  const pending = () => joined.filter((d) => d.alive && d.seq >= 0 && (!d.lastBoard || d.lastBoard.c < d.seq + 1)).length;
  while (now() < drainDeadline && pending() > 0) await sleep(100);
  const measuredDoneAt = now();
  measuring = false;

  let reflected = 0, lost = 0, unreflectedDevices = 0, acked = 0;
  for (const d of joined) {
    const sent = d.seq + 1;
    const got = d.lastBoard ? d.lastBoard.c : 0;
    reflected += Math.min(got, sent);
    acked += Math.min(d.acked, sent);
    if (got < sent) { lost += sent - got; unreflectedDevices++; }
  }

  let plVersion = process.env.PULSELINE_VERSION || null; // run_pulseline.sh: version + commit of the checkout

  const out = {
    system: 'pulseline',
    versions: {
      node: process.version,
      pulseline: plVersion,
      ws: pkgVersion('ws'),
      msgpackr: pkgVersion('msgpackr'),
    },
    clients: N,
    clients_joined: joined.length,
    rooms: R,
    seconds: S,
    warmup: W,
    create_spread_ms: CREATE_SPREAD_MS,
    join_seconds: +joinSeconds.toFixed(2),
    samples_sent: samplesSentWindow,
    samples_sent_total: samplesSentTotal,
    samples_reflected_total: reflected,
    samples_lost: lost,
    devices_with_unreflected_samples: unreflectedDevices,
    boards_received: boardsReceived,
    boards_expected_approx: Math.round(joined.length * S * BOARD_RATE),
    loader_kept_up: samplesSentWindow >= 0.99 * joined.length * S,
    boards_missing: missingBoards,
    stale_boards: staleBoards,
    latency_ms: summary(latency),
    board_age_ms: summary(boardAge),
    // pulseline boards carry one server time (`ts`, when the edge got the board from the actor);
    // there is no send-time stamp, so board_age cannot be split as in load.js
    board_age_parts_ms: { server_queue: summary([]), transit_and_loader: summary([]) },
    errors: Object.values(errors).reduce((a, b) => a + b, 0),
    error_breakdown: errors,
    error_samples: errorSamples,
    loader: {
      cpu_cores: +((cpu.user + cpu.system) / 1e6 / mwall).toFixed(3),
      cpu_user_s: +(cpu.user / 1e6).toFixed(3),
      cpu_system_s: +(cpu.system / 1e6).toFixed(3),
      event_loop_delay_ms: { p99: +Math.max(0, eld.percentile(99) / 1e6 - 10).toFixed(3), max: +Math.max(0, eld.max / 1e6 - 10).toFixed(3) },
      send_lag_ms: summary(sendLag),
      rss_mb: +(process.memoryUsage().rss / 1048576).toFixed(1),
    },
    server: serverWindow,
    machine: (() => {
      const ncpu = os.cpus().length;
      const m = { cpus: ncpu, loadavg_end: os.loadavg().map((x) => +x.toFixed(2)) };
      if (ps0 && ps1 && ps1.total > ps0.total) {
        m.busy_cores = +(((ps1.busy - ps0.busy) / (ps1.total - ps0.total)) * ncpu).toFixed(3);
        m.steal_cores = +(((ps1.steal - ps0.steal) / (ps1.total - ps0.total)) * ncpu).toFixed(3);
        const mine = ((cpu.user + cpu.system) / 1e6 / mwall) + (serverWindow ? serverWindow.cpu_cores : 0);
        m.other_cores = +(m.busy_cores - mine).toFixed(3); // everything but the pulseline stack + this loader
      }
      if (pr0 != null && pr1 != null) m.cpu_pressure_some = +((pr1 - pr0) / 1e6 / mwall).toFixed(3);
      return m;
    })(),
    drain_ms: +(measuredDoneAt - measureEnd).toFixed(1),
    total_wall_s: +((now() - wallStart) / 1000).toFixed(1),
    pulseline: {
      protocol: '1.1',
      connections_per_rider: 1,
      board_rate_hz: BOARD_RATE,
      board_token: BOARD_TOKEN,
      sessions: sessionIds.filter(Boolean).length,
      sessions_create_s: +sessionsSeconds.toFixed(2),
      samples_acked_total: acked,
      acks_received: acksReceived,
      boards_received_total: boardsTotal,
      boards_without_own_row: boardsWithoutOwnRow,
      device_frames_received: framesIn,
      mean_frame_bytes: {
        samples_out: bytes.samples_frames ? +(bytes.samples_out / bytes.samples_frames).toFixed(1) : null,
        board_in: bytes.boards ? +(bytes.board_in / bytes.boards).toFixed(1) : null,
        device_socket_in: bytes.device_frames_in ? +(bytes.device_in / bytes.device_frames_in).toFixed(1) : null,
      },
    },
  };
  process.stdout.write(JSON.stringify(out) + '\n');
  shuttingDown = true;
  for (const d of joined) {
    for (const ws of [d.dws, d.bws]) { try { ws.close(1000); } catch (_) { /* ignore */ } }
  }
  setTimeout(() => process.exit(0), 200).unref();
}

const HARD_LIMIT_MS = JOIN_PHASE_MS + (W + S) * 1000 + DRAIN_MS + 30000;
setTimeout(() => { console.error('[load-pl] hard time limit reached'); process.exit(3); }, HARD_LIMIT_MS).unref();

main().catch((e) => { console.error(e); process.exit(1); });
