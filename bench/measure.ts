// What run.ts and proxy-overhead.ts share: the variant servers in child processes
// (bench/server.ts), one measurement of a server under autocannon's load, medians, and tables.
import { type ChildProcess, fork } from 'node:child_process';
import { once } from 'node:events';
import { rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import type { ToChild, ToParent } from './server.js';
import { REQUESTS, type Route, type ServerName } from './variants.js';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));

// --- server children ---------------------------------------------------------------------------

export interface Child {
  readonly name: ServerName;
  readonly port: number;
  readonly process: ChildProcess;
}

/** The environment of a server child (bench/server.ts reads it). */
export function serverEnv(databaseUrl: string, table: string, poolMax: number): NodeJS.ProcessEnv {
  return {
    ...process.env,
    DATABASE_URL: databaseUrl,
    NODE_ENV: 'production',
    BENCH_TABLE: table,
    BENCH_POOL_MAX: String(poolMax),
    // The servers load @context-db/* from the packages' built dist/, as users do: the root
    // tsconfig maps them to their sources (for type-checking), and tsx would follow that.
    TSX_TSCONFIG_PATH: join(dirname(BENCH_DIR), 'tsconfig.base.json'),
  };
}

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/**
 * Fork bench/server.ts for one variant and wait until it listens. With `profileDir`, the server
 * runs under --cpu-prof into that directory (emptied first: tsx's loader thread writes a profile
 * of its own next to the main thread's, the larger file).
 *
 * @example
 * const child = await startServer('fastify-plain', { ...process.env, BENCH_TABLE, BENCH_POOL_MAX: '10' });
 */
export async function startServer(
  name: ServerName,
  env: NodeJS.ProcessEnv,
  profileDir: string | undefined,
): Promise<Child> {
  if (profileDir !== undefined) await rm(profileDir, { recursive: true, force: true });
  const profileArgs = profileDir !== undefined ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [];
  const child = fork(join(BENCH_DIR, 'server.ts'), [name], {
    execArgv: ['--import', 'tsx', ...profileArgs],
    env,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  children.add(child);
  child.once('exit', () => children.delete(child));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start within 30 s`)), 30_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with code ${code} before listening`));
    });
    child.once('message', (message: ToParent) => {
      if (message.type !== 'listening') return;
      clearTimeout(timer);
      resolve(message.port);
    });
  });
  return { name, port, process: child };
}

/** The CPU time (user + system, µs) the server process has used so far. */
async function cpuMicros(child: Child): Promise<number> {
  const reply = new Promise<number>((resolve, reject) => {
    const onExit = (): void => reject(new Error(`${child.name} exited`));
    const onMessage = (message: ToParent): void => {
      if (message.type !== 'cpu') return;
      child.process.off('message', onMessage).off('exit', onExit);
      resolve(message.micros);
    };
    child.process.on('message', onMessage).once('exit', onExit);
  });
  child.process.send({ type: 'cpu' } satisfies ToChild);
  return reply;
}

/** Ask the server to stop (a clean exit, which writes its profile); kill it after 10 s. */
export async function stopServer(child: Child): Promise<void> {
  if (child.process.exitCode !== null) return;
  const exited = once(child.process, 'exit');
  child.process.send({ type: 'stop' } satisfies ToChild);
  const timer = setTimeout(() => child.process.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

// --- measurements ------------------------------------------------------------------------------

export interface Sample {
  readonly reqPerSec: number;
  /** The server's CPU time (user + system) per completed request: steadier than req/s on a busy machine. */
  readonly cpuMicrosPerRequest: number;
  readonly p50: number;
  readonly p99: number;
  readonly completed: number;
  readonly errors: number;
  readonly non2xx: number;
}

/**
 * Load one route of a server with autocannon for `duration` seconds.
 *
 * @example
 * const { reqPerSec, cpuMicrosPerRequest } = await load(child, 'insert', 3, 16);
 */
export async function load(child: Child, route: Route, duration: number, connections: number): Promise<Sample> {
  const { method, path, body } = REQUESTS[route];
  const cpuBefore = await cpuMicros(child);
  const result = await autocannon({
    url: `http://127.0.0.1:${child.port}${path}`,
    method,
    ...(body !== undefined && { body, headers: { 'content-type': 'application/json' } }),
    connections,
    duration,
  });
  const cpu = (await cpuMicros(child)) - cpuBefore;
  return {
    reqPerSec: result.requests.total / result.duration,
    cpuMicrosPerRequest: cpu / Math.max(result.requests.total, 1),
    p50: result.latency.p50,
    p99: result.latency.p99,
    completed: result.requests.total,
    errors: result.errors,
    non2xx: result.non2xx,
  };
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  const upper = sorted[middle] ?? Number.NaN;
  return sorted.length % 2 === 1 ? upper : ((sorted[middle - 1] ?? Number.NaN) + upper) / 2;
}

/** A Markdown table, its columns padded; `rightAligned` are the indexes of numeric columns. */
export function table(
  header: readonly string[],
  rows: readonly (readonly string[])[],
  rightAligned: readonly number[],
): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? '').length)));
  const cell = (text: string, i: number): string =>
    rightAligned.includes(i) ? text.padStart(widths[i] ?? 0) : text.padEnd(widths[i] ?? 0);
  const line = (cells: readonly string[]): string => `| ${cells.map(cell).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (rightAligned.includes(i) ? `${'-'.repeat(w + 1)}:` : '-'.repeat(w + 2))).join('|')}|`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}
