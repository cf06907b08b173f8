// What the bench measures: the servers (one child process each), the two routes every server
// has, and the comparisons with their targets. run.ts drives these; server.ts builds them.
import type { PoolConfig } from 'pg';

export type Framework = 'fastify' | 'express' | 'koa';
export type Route = 'insert' | 'no-query';

export const FRAMEWORKS: readonly Framework[] = ['fastify', 'express', 'koa'];
export const ROUTES: readonly Route[] = ['insert', 'no-query'];

export const SERVERS = [
  'fastify-context-db',
  'fastify-context-db-no-reset',
  'fastify-plain',
  'fastify-postgres',
  'express-context-db',
  'express-plain',
  'koa-context-db',
  'koa-plain',
] as const;
export type ServerName = (typeof SERVERS)[number];

export function isServerName(value: unknown): value is ServerName {
  return (SERVERS as readonly unknown[]).includes(value);
}

export function frameworkOf(server: ServerName): Framework {
  const framework = server.slice(0, server.indexOf('-'));
  if (framework !== 'fastify' && framework !== 'express' && framework !== 'koa') {
    throw new Error(`no framework in server name ${server}`);
  }
  return framework;
}

// A "plain" server has no database plugin: its insert route is the hand-written transaction,
// its no-query route is the framework alone.
export function variantLabel(server: ServerName, route: Route): string {
  if (server.endsWith('-context-db')) return 'context-db';
  // The same plugin with `resetSession: false`: what the session reset costs.
  if (server.endsWith('-no-reset')) return 'context-db, no reset';
  if (server === 'fastify-postgres') return '@fastify/postgres';
  return route === 'insert' ? 'hand-written' : 'no plugin';
}

/** The request each route gets; the same on every server. */
export const REQUESTS: Readonly<Record<Route, { method: 'GET' | 'POST'; path: string; body?: string }>> = {
  insert: { method: 'POST', path: '/insert', body: JSON.stringify({ text: 'bench' }) },
  'no-query': { method: 'GET', path: '/ping' },
};

/** One measurement: a route on a server. */
export interface Measured {
  readonly server: ServerName;
  readonly route: Route;
}

export interface Comparison {
  readonly subject: Measured;
  readonly baseline: Measured;
  /** The subject's requests/s over the baseline's must be at least this (median over rounds). */
  readonly target: number;
}

/**
 * The comparisons of one framework, with issue #14's targets: an insert as fast as the baselines
 * with no latency added, and 1.30 times as fast at 1 ms or more (two round trips instead of
 * three, BEGIN travelling with the first query); a request that asks for no session at 0.95 of
 * the app without context-db.
 */
export function comparisonsFor(framework: Framework, latencyMs: number | null): Comparison[] {
  const ctx = `${framework}-context-db` as const;
  const plain = `${framework}-plain` as const;
  const insertTarget = latencyMs !== null && latencyMs >= 1 ? 1.3 : 1.0;
  const insert = (baseline: ServerName, target: number): Comparison => ({
    subject: { server: ctx, route: 'insert' },
    baseline: { server: baseline, route: 'insert' },
    target,
  });
  return [
    insert(plain, insertTarget),
    ...(framework === 'fastify'
      ? [insert('fastify-postgres', insertTarget), insert('fastify-context-db-no-reset', 0.97)]
      : []),
    { subject: { server: ctx, route: 'no-query' }, baseline: { server: plain, route: 'no-query' }, target: 0.95 },
  ];
}

/** The measurements of one framework, grouped by route so that rivals run back to back. */
export function measurementsFor(framework: Framework): Measured[] {
  const insert: ServerName[] =
    framework === 'fastify'
      ? ['fastify-context-db', 'fastify-context-db-no-reset', 'fastify-plain', 'fastify-postgres']
      : [`${framework}-context-db`, `${framework}-plain`];
  return [
    ...insert.map((server) => ({ server, route: 'insert' as const })),
    { server: `${framework}-context-db`, route: 'no-query' },
    { server: `${framework}-plain`, route: 'no-query' },
  ];
}

export function serversFor(framework: Framework): ServerName[] {
  return SERVERS.filter((server) => frameworkOf(server) === framework);
}

/** What a server child needs, passed in its environment. */
export interface ServerConfig {
  readonly databaseUrl: string;
  readonly table: string;
  readonly poolMax: number;
}

export const INSERT_SQL = (table: string): string => `INSERT INTO ${table} (text) VALUES ($1) RETURNING id`;

/**
 * The pool every variant uses, so that only the request handling differs. Commits do not wait
 * for the WAL flush: that wait is the same for every variant and only adds disk noise to a
 * measurement of what the library costs in CPU and round trips.
 */
export function poolConfig(config: ServerConfig): PoolConfig {
  return {
    connectionString: config.databaseUrl,
    max: config.poolMax,
    application_name: 'context_db_bench',
    options: '-c synchronous_commit=off',
  };
}
