// Compiled by the consumer smoke test under every module resolution, never run. Each
// `@ts-expect-error` is a probe: if the type under it were `any` (an augmentation that did not
// load, @types/pg missing under skipLibCheck), the line would compile and tsc would fail on the
// unused directive.
import { ContextDbError, type DbConnect, dbSession, SessionClosedError } from '@context-db/core';
import { putSavepointSessionInCtx, rollbackSession, setTestContext } from '@context-db/core/testing';
import type { Express } from 'express';
import type { FastifyInstance } from 'fastify';
import type Koa from 'koa';

export function probes(fastify: FastifyInstance, app: Express, koa: Koa): void {
  fastify.get('/probe', async (request) => {
    const { rows } = await (await request.db.session()).query<{ id: number }>('SELECT 1 AS id');
    const id: number = rows.length > 0 ? (rows[0]?.id ?? 0) : 0;
    // @ts-expect-error query rows are typed: `id` is a number
    const text: string = rows[0]?.id;
    // @ts-expect-error request.db is typed: it has no such helper
    request.db.noSuchHelper();
    return { id, text };
  });

  app.get('/probe', async (req, res) => {
    const session = await req.db.session();
    // @ts-expect-error req.db is typed: it has no such helper
    req.db.noSuchHelper();
    const { rows } = await session.query<{ name: string }>('SELECT $1::text AS name', ['x']);
    // @ts-expect-error query rows are typed: `name` is a string
    const count: number = rows[0]?.name;
    res.json({ count });
  });

  koa.use(async (ctx) => {
    const { rows } = await (await ctx.db.session()).query<{ ok: boolean }>('SELECT true AS ok');
    // @ts-expect-error ctx.db is typed: it has no such helper
    ctx.db.noSuchHelper();
    // @ts-expect-error query rows are typed: `ok` is a boolean
    const ok: string = rows[0]?.ok;
    ctx.body = { ok };
  });
}

export async function coreProbes(db: DbConnect): Promise<void> {
  const { rows } = await (await dbSession(db)).query<{ n: number }>('SELECT 1 AS n');
  // @ts-expect-error query rows are typed without @types/pg in the app's own dependencies
  const n: string = rows[0]?.n;
  await setTestContext(async () => n);
  // The two entries share one declaration of DbConnect and DbSession under every resolution: the
  // testing helpers take the app's own (their #private would refuse a second declaration).
  await rollbackSession(db, (session) => putSavepointSessionInCtx(db, session, () => dbSession(db)));
  try {
    await dbSession(db);
  } catch (err) {
    if (err instanceof SessionClosedError) {
      const code: string = err.code;
      // @ts-expect-error instanceof narrows to the error class
      const wrong: number = err.code;
      void [code, wrong];
    }
    if (!(err instanceof ContextDbError)) throw err;
  }
}
