// Types of pulseline.js (the JavaScript client; docs/clients.md, docs/protocol.md).

export interface DeviceBinding { device: string; participant: string; session: string }

export interface Sample {
  ts?: number;        // Unix seconds on the device clock (default: now)
  hr?: number | null; // bpm
  power?: number | null; // W
  cadence?: number | null; // rpm
  speed?: number | null; // m/s
  distance?: number | null; // m, cumulative per device
}

export interface LinkOptions {
  /** One edge URL (http(s):// or ws(s)://) or several to fail over between. */
  urls: string | string[];
  /** A WebSocket class (default: globalThis.WebSocket). */
  WebSocket?: unknown;
  minDelayMs?: number;
  maxDelayMs?: number;
}

export interface BoardRequest { rate?: number; session?: string; participant?: string }

export interface DeviceClientOptions extends LinkOptions {
  token: string;
  devices: DeviceBinding[];
  /** Protocol v1.1: boards (with acks inside) on this connection. */
  board?: BoardRequest | true | null;
  hub?: string | null;
  maxBatch?: number;
}

export interface CloseEvent { code: number; reason: string; retry: boolean }

export interface Frame { t: string; [field: string]: unknown }

export interface Board extends Frame {
  t: "board";
  session: string;
  version: number;
  phase: string;
  n: number;
  ts: number;
  cols?: string[];
  top: unknown[][];
  you?: unknown[];
  rows?: unknown[][];
  me?: number[];
  acks?: Record<string, number>;
}

export interface DeviceStats { sent: number; acked: number; rejected: number; resent: number; reconnects: number; throttles: number }

export declare const TERMINAL_CLOSES: Readonly<Record<number, string>>;

export declare class DeviceClient {
  constructor(options: DeviceClientOptions);
  readonly stats: DeviceStats;
  readonly pending: Record<string, number>;
  connect(): this;
  push(device: string, sample: Sample): number;
  drained(options?: { timeoutMs?: number }): Promise<void>;
  renew(token: string): void;
  close(): void;
  drop(): void;
  on(type: "welcome" | "ack" | "throttle" | "error" | "token_expiring" | "auth_ok" | "queue" | "frame", fn: (frame: Frame) => void): this;
  on(type: "board", fn: (board: Board) => void): this;
  on(type: "close", fn: (event: CloseEvent) => void): this;
}

export interface BoardClientOptions extends LinkOptions {
  session: string;
  token: string;
  rate?: number;
  view?: "top" | "all";
  participant?: string | null;
}

export declare class BoardClient {
  constructor(options: BoardClientOptions);
  readonly board: Board | null;
  connect(): this;
  renew(token: string): void;
  close(): void;
  on(type: "board", fn: (board: Board) => void): this;
  on(type: "open", fn: () => void): this;
  on(type: "close", fn: (event: CloseEvent) => void): this;
}

export declare function rows(board: Board, key?: "top" | "rows"): Record<string, unknown>[];
