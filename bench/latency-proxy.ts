// A TCP proxy between the bench's variant apps and PostgreSQL that delays every chunk, in each
// direction, by half a given round-trip time: `pnpm bench --latency 1` makes each query cost the
// one millisecond a database in another zone of the same cloud region costs, for every variant.
//
// It runs in a worker thread of the bench process, so that autocannon's work on the main thread
// never delays a delivery. Node's timers have whole-millisecond resolution (a 0.5 ms setTimeout
// fires after 1–2 ms), so the proxy does not use them: a second, tiny thread sleeps with
// Atomics.wait() (sub-millisecond) until the earliest chunk is due and then wakes the proxy, which
// writes every chunk that is due by then. Every chunk waits the same time, so one FIFO queue for
// all connections is also (near enough) ordered by due time; delivering only from its head keeps
// the order within each connection, and there is one pending wake-up at a time however many
// chunks are queued, so the proxy adds no throughput limit of its own. With a round trip of 0 it
// forwards at once (to measure what the hop itself costs).
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import pg from 'pg';

/** Where the proxy forwards to. */
export interface ProxyTarget {
  readonly host: string;
  readonly port: number;
}

/** What the proxy did, for the results: chunks forwarded and the one-way delays they got. */
export interface ProxyStats {
  readonly connections: number;
  readonly chunks: number;
  readonly bytes: number;
  /** Wake-ups of the proxy by its clock thread (each delivers every chunk due by then). */
  readonly wakeUps: number;
  /** Time from reading a chunk to writing it on, median and 99th percentile (ms; 0 with no delay). */
  readonly oneWayP50Ms: number;
  readonly oneWayP99Ms: number;
  /** How much earlier than due the proxy asks to be woken, to make up for how late wake-ups come (ms). */
  readonly leadMs: number;
  /** Share of wall time the proxy thread was busy since it started (0–1). */
  readonly eventLoopUtilization: number;
}

export interface LatencyProxy {
  /** The loopback port the proxy listens on. */
  readonly port: number;
  readonly roundTripMs: number;
  stats(): Promise<ProxyStats>;
  close(): Promise<void>;
}

type ToProxy = { readonly type: 'stats' } | { readonly type: 'close' };
type FromProxy =
  | { readonly type: 'listening'; readonly port: number }
  | { readonly type: 'stats'; readonly stats: Omit<ProxyStats, 'eventLoopUtilization'> }
  | { readonly type: 'closed' };

interface ProxyData {
  readonly kind: 'latency-proxy';
  readonly target: ProxyTarget;
  readonly roundTripMs: number;
}

/** The host and port of a postgres:// URL. */
export function targetOf(databaseUrl: string): ProxyTarget {
  const url = new URL(databaseUrl);
  if (url.searchParams.has('host')) throw new Error('--latency needs a TCP DATABASE_URL (no ?host= socket)');
  return { host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port || 5432) };
}

/** The same database URL, through the proxy listening on `port`. */
export function throughProxy(databaseUrl: string, port: number): string {
  const url = new URL(databaseUrl);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  return url.href;
}

/**
 * Start the proxy in a worker thread; it listens on a free loopback port.
 *
 * @example
 * const proxy = await startLatencyProxy(targetOf(process.env.DATABASE_URL), 1);
 * const url = throughProxy(process.env.DATABASE_URL, proxy.port); // 1 ms per round trip
 * await proxy.close();
 */
export async function startLatencyProxy(target: ProxyTarget, roundTripMs: number): Promise<LatencyProxy> {
  // tsx registers its loader on the main thread only: the worker registers it before loading
  // this file again.
  const tsx = import.meta.resolve('tsx/esm/api');
  const self = import.meta.url;
  const worker = new Worker(
    `import(${JSON.stringify(tsx)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(self)}); });`,
    { eval: true, workerData: { kind: 'latency-proxy', target, roundTripMs } satisfies ProxyData },
  );
  const failed = once(worker, 'error').then(([err]) => Promise.reject(err));
  failed.catch(() => {});
  const next = async <T extends FromProxy['type']>(type: T): Promise<Extract<FromProxy, { type: T }>> => {
    for (;;) {
      const [message] = (await Promise.race([once(worker, 'message'), failed])) as [FromProxy];
      if (message.type === type) return message as Extract<FromProxy, { type: T }>;
    }
  };
  const { port } = await next('listening');
  const started = worker.performance.eventLoopUtilization();
  return {
    port,
    roundTripMs,
    async stats() {
      worker.postMessage({ type: 'stats' } satisfies ToProxy);
      const { stats } = await next('stats');
      const { utilization } = worker.performance.eventLoopUtilization(started);
      return { ...stats, eventLoopUtilization: utilization };
    },
    async close() {
      worker.postMessage({ type: 'close' } satisfies ToProxy);
      await next('closed');
      await worker.terminate();
    },
  };
}

// --- the worker --------------------------------------------------------------------------------

/** Milliseconds on the monotonic clock every thread of the process shares. */
const nowMs = (): number => Number(process.hrtime.bigint()) / 1e6;

// The clock thread, plain JavaScript run with eval: `control[0]` is a generation the proxy bumps
// whenever it sets a new deadline (`deadline[0]`, 0 = none) or asks the clock to stop
// (`control[1]`). The clock posts one message per deadline reached, then waits for the next.
const CLOCK = `
const { parentPort, workerData } = require('node:worker_threads');
const control = new Int32Array(workerData, 0, 2);
const deadline = new Float64Array(workerData, 8, 1);
const now = () => Number(process.hrtime.bigint()) / 1e6;
for (;;) {
  const generation = Atomics.load(control, 0);
  if (Atomics.load(control, 1) === 1) break;
  const due = deadline[0];
  if (due === 0) { Atomics.wait(control, 0, generation); continue; }
  const wait = due - now();
  if (wait > 0) { Atomics.wait(control, 0, generation, wait); continue; }
  parentPort.postMessage(0);
  Atomics.wait(control, 0, generation);
}
`;

interface Pending {
  readonly arrived: number;
  readonly due: number;
  readonly from: Socket;
  readonly to: Socket;
  /** null: the sender ended its side, end the receiver's once the data before it is delivered. */
  readonly chunk: Buffer | null;
}

/** One-way delays in 10 µs buckets up to 50 ms (the last bucket holds the rest). */
class Histogram {
  readonly #counts = new Uint32Array(5001);
  #total = 0;

  add(ms: number): void {
    const bucket = Math.min(5000, Math.max(0, Math.round(ms * 100)));
    this.#counts[bucket] = (this.#counts[bucket] ?? 0) + 1;
    this.#total++;
  }

  quantile(q: number): number {
    let seen = 0;
    for (let i = 0; i < this.#counts.length; i++) {
      seen += this.#counts[i] ?? 0;
      if (seen > q * this.#total) return i / 100;
    }
    return 0;
  }
}

class DelayQueue {
  readonly #halfMs: number;
  readonly #shared = new SharedArrayBuffer(16);
  readonly #control = new Int32Array(this.#shared, 0, 2);
  readonly #deadline = new Float64Array(this.#shared, 8, 1);
  readonly #clock: Worker;
  #queue: Pending[] = [];
  #head = 0;
  /**
   * How late a wake-up typically comes (the thread switches, the kernel's timer slack): a running
   * median, taken off every chunk's wait so that delays are right on average, not only never short.
   */
  #lead = 0;
  readonly delays = new Histogram();
  wakeUps = 0;

  constructor(halfMs: number) {
    this.#halfMs = halfMs;
    this.#clock = new Worker(CLOCK, { eval: true, workerData: this.#shared });
    this.#clock.on('message', () => this.#deliver());
  }

  get leadMs(): number {
    return this.#lead;
  }

  push(from: Socket, to: Socket, chunk: Buffer | null): void {
    const arrived = nowMs();
    const entry = { arrived, due: arrived + this.#halfMs - this.#lead, from, to, chunk };
    this.#queue.push(entry);
    if (this.#queue.length - this.#head === 1) this.#arm(entry.due);
  }

  #arm(due: number): void {
    this.#deadline[0] = due;
    Atomics.add(this.#control, 0, 1);
    Atomics.notify(this.#control, 0);
  }

  #deliver(): void {
    this.wakeUps++;
    const now = nowMs();
    let entry = this.#queue[this.#head];
    if (entry === undefined) {
      this.#arm(0);
      return;
    }
    // A step of 1 µs per wake-up: the estimate follows the median of the lateness.
    this.#lead = Math.min(this.#halfMs, Math.max(0, this.#lead + (now - entry.due > this.#lead ? 0.001 : -0.001)));
    const corked = new Set<Socket>();
    while (entry !== undefined && entry.due <= now) {
      this.#head++;
      this.delays.add(now - entry.arrived);
      if (!entry.to.destroyed) {
        if (!corked.has(entry.to)) {
          entry.to.cork();
          corked.add(entry.to);
        }
        forward(entry.from, entry.to, entry.chunk);
      }
      entry = this.#queue[this.#head];
    }
    // One write (writev) per socket for all that was due at once.
    for (const socket of corked) socket.uncork();
    if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    this.#arm(entry?.due ?? 0);
  }

  stop(): void {
    Atomics.store(this.#control, 1, 1);
    this.#arm(0);
  }
}

/** Write a chunk (or the end) to `to`, pausing `from` while `to` cannot take more. */
function forward(from: Socket, to: Socket, chunk: Buffer | null): void {
  if (chunk === null) {
    to.end();
    return;
  }
  if (!to.write(chunk) && !from.isPaused()) {
    from.pause();
    to.once('drain', () => from.resume());
  }
}

function runProxy({ target, roundTripMs }: ProxyData): void {
  const port = parentPort;
  if (port === null) throw new Error('latency-proxy: not in a worker');
  const queue = roundTripMs > 0 ? new DelayQueue(roundTripMs / 2) : undefined;
  let connections = 0;
  let chunks = 0;
  let bytes = 0;
  const sockets = new Set<Socket>();
  const pipe = (from: Socket, to: Socket): void => {
    from.on('data', (chunk: Buffer) => {
      chunks++;
      bytes += chunk.length;
      if (queue === undefined) forward(from, to, chunk);
      else queue.push(from, to, chunk);
    });
    from.on('end', () => (queue === undefined ? forward(from, to, null) : queue.push(from, to, null)));
    // An error on one side ends the connection on the other at once (a broken link, as in a cloud).
    from.on('error', () => to.destroy());
    from.on('close', (hadError) => {
      sockets.delete(from);
      if (hadError) to.destroy();
    });
  };
  const server = createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
    connections++;
    const upstream = connect({ ...target, allowHalfOpen: true, noDelay: true });
    sockets.add(client).add(upstream);
    pipe(client, upstream);
    pipe(upstream, client);
  });
  server.listen(0, '127.0.0.1', () => {
    port.postMessage({ type: 'listening', port: (server.address() as AddressInfo).port } satisfies FromProxy);
  });
  port.on('message', (message: ToProxy) => {
    if (message.type === 'stats') {
      port.postMessage({
        type: 'stats',
        stats: {
          connections,
          chunks,
          bytes,
          wakeUps: queue?.wakeUps ?? 0,
          oneWayP50Ms: queue?.delays.quantile(0.5) ?? 0,
          oneWayP99Ms: queue?.delays.quantile(0.99) ?? 0,
          leadMs: queue?.leadMs ?? 0,
        },
      } satisfies FromProxy);
    }
    if (message.type === 'close') {
      for (const socket of sockets) socket.destroy();
      queue?.stop();
      server.close(() => port.postMessage({ type: 'closed' } satisfies FromProxy));
    }
  });
}

if (!isMainThread && (workerData as Partial<ProxyData> | null)?.kind === 'latency-proxy') {
  runProxy(workerData as ProxyData);
}

/** Round-trip times of one connection, from sequential `SELECT 1`s (ms). */
export interface RoundTrip {
  readonly p50Ms: number;
  readonly p99Ms: number;
}

/**
 * Time `samples` sequential `SELECT 1` on one connection to `databaseUrl`, after a few to warm
 * up: what a round trip costs, with and without the proxy.
 *
 * @example
 * const { p50Ms } = await measureRoundTrip(throughProxy(url, proxy.port), 200);
 */
export async function measureRoundTrip(databaseUrl: string, samples: number): Promise<RoundTrip> {
  const client = new pg.Client({ connectionString: databaseUrl, application_name: 'context_db_bench_rtt' });
  await client.connect();
  try {
    const times: number[] = [];
    for (let i = -20; i < samples; i++) {
      const start = nowMs();
      await client.query('SELECT 1');
      if (i >= 0) times.push(nowMs() - start);
    }
    times.sort((a, b) => a - b);
    const at = (q: number): number => times[Math.min(times.length - 1, Math.floor(q * times.length))] ?? Number.NaN;
    return { p50Ms: at(0.5), p99Ms: at(0.99) };
  } finally {
    await client.end();
  }
}
