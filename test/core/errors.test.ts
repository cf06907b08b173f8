import { createRequire } from 'node:module';
import * as esm from '@context-db/core';
import t from 'tap';
import { checkedOut, createTable, testDb, texts } from '../fixtures/db.js';

const { ContextNotInitiatedError, DbSessionCtx, dbSession, SessionClosedError } = esm;

t.test('dbSession outside a context throws ContextNotInitiatedError naming the fix', async (t) => {
  const { db } = testDb(t);
  const err = await dbSession(db).catch((e: unknown) => e);
  t.type(err, ContextNotInitiatedError);
  t.type(err, esm.ContextDbError);
  t.match(err, { code: 'CONTEXT_NOT_INITIATED', message: /contextDbPlugin.*runInNewCtx/s });
  t.notOk(esm.isContextInitiated());
  await t.rejects(esm.commitDbSession(db), { message: /commitDbSession\(\) was called outside/ });
});

t.test('a session used after its context finished throws SessionClosedError and takes no connection', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  let background: Promise<unknown> | undefined;
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  await ctx.run(async () => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('request')`);
    // Fire-and-forget work that outlives the request, the classic mistake:
    background = (async () => {
      await gate;
      return Promise.allSettled([session.query(`INSERT INTO ${table} (text) VALUES ('late')`), dbSession(db)]);
    })();
  });
  await ctx.finish();
  release();
  const [late, again] = (await background) as PromiseSettledResult<unknown>[];
  t.match(late, { status: 'rejected', reason: { code: 'SESSION_CLOSED', message: /runInNewCtx/ } });
  t.match(again, { status: 'rejected' });
  t.type((again as PromiseRejectedResult).reason, SessionClosedError);
  t.same(await texts(table), ['request']);
  t.equal(checkedOut(db), 0);
});

t.test(
  'opening a context inside another throws ContextAlreadyInitiatedError; re-entering the same is fine',
  async (t) => {
    const outer = new DbSessionCtx();
    await outer.run(async () => {
      t.throws(() => new DbSessionCtx().run(() => {}), { code: 'CONTEXT_ALREADY_INITIATED', message: /runInNewCtx/ });
      t.equal(
        outer.run(() => 'again'),
        'again',
      );
    });
    await outer.finish();
  },
);

t.test('one context store even when the ESM and CommonJS builds are both loaded', async (t) => {
  const cjs = createRequire(import.meta.url)('@context-db/core') as typeof esm;
  t.not(cjs.DbSessionCtx, esm.DbSessionCtx, 'two copies of the code are loaded');
  const { db } = testDb(t);
  const ctx = new cjs.DbSessionCtx();
  await ctx.run(async () => {
    t.ok(esm.isContextInitiated(), 'the ESM copy sees the CommonJS context');
    const fromEsm = await esm.dbSession(db);
    t.equal(await cjs.dbSession(db), fromEsm, 'and both give the same session');
  });
  await ctx.finish();
});
