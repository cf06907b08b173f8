// The session reset keeps node-postgres's named (prepared) queries working across requests.
import { type DbConnect, type DbSession, DbSessionCtx, dbSession, RequestCtx } from '@context-db/core';
import { setTestContext } from '@context-db/core/testing';
import t from 'tap';
import { testDb } from '../fixtures/db.js';

async function inCtx<R>(db: DbConnect, fn: (session: DbSession) => Promise<R>, statusCode = 200): Promise<R> {
  const ctx = new DbSessionCtx();
  const result = await ctx.run(async () => fn(await dbSession(db)));
  await ctx.finish({ statusCode }).catch(() => {});
  return result;
}

t.test('named queries ({ name, text }) keep working across requests on one connection', async (t) => {
  const { db } = testDb(t, { max: 1 });
  for (let i = 0; i < 3; i++) {
    const n = await inCtx(
      db,
      async (s) => {
        await s.query(`SET search_path = pg_catalog, public`);
        return (await s.query<{ n: number }>({ name: 'review_named', text: 'SELECT $1::int AS n', values: [i] }))
          .rows[0]?.n;
      },
      i === 1 ? 500 : 200,
    );
    t.equal(n, i);
  }
});
