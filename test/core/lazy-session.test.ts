import { DbSessionCtx, dbSession } from '@context-db/core';
import t from 'tap';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';

t.test(
  'dbSession takes no connection until the first query, and is the same object everywhere in the context',
  async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const ctx = new DbSessionCtx();
    await ctx.run(async () => {
      const session = await dbSession(db);
      t.equal((await activity(appName)).total, 0, 'no server connection before the first query');
      t.notOk(session.connected);
      const nested = async () => {
        await new Promise((resolve) => setTimeout(resolve, 1));
        return dbSession(db);
      };
      const [a, b] = await Promise.all([nested(), (async () => nested())()]);
      t.equal(a, session, 'nested async work gets the same session');
      t.equal(b, session);
      await session.query(`INSERT INTO ${table} (text) VALUES ('a')`);
      t.equal(checkedOut(db), 1);
      t.same(await activity(appName), { total: 1, idleInTransaction: 1, active: 0 }, 'BEGIN was sent');
    });
    await ctx.finish({ statusCode: 200 });
    t.same(await texts(table), ['a']);
    t.same(await activity(appName), { total: 1, idleInTransaction: 0, active: 0 });
    t.equal(checkedOut(db), 0);
  },
);
