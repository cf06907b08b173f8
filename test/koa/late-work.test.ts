// Issue 10 item 1: from the moment the request's context starts finishing, new work on its
// session fails with SessionClosedError instead of being reported done and then rolled back (or
// committed behind the response's back). The COMMIT is slowed by a deferred constraint trigger
// that sleeps, so the handler's late query certainly arrives while it runs.
import { dbSession, SessionClosedError } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Koa from 'koa';
import t from 'tap';
import { activity, admin, checkedOut, createTable, eventually, testDb, texts, uniqueName } from '../fixtures/db.js';
import { request, serve } from '../fixtures/koa.js';

t.test('a query fired after ctx.body while COMMIT runs fails with SessionClosedError; its row is absent', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const slow = uniqueName('slow_commit');
  await admin.query(
    `CREATE FUNCTION ${slow}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$`,
  );
  t.teardown(() => admin.query(`DROP FUNCTION IF EXISTS ${slow}() CASCADE`));
  await admin.query(
    `CREATE CONSTRAINT TRIGGER ${slow} AFTER INSERT ON ${table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ${slow}()`,
  );
  const late: Array<{ ok: true } | { error: unknown }> = [];
  const app = new Koa();
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('response')`);
    ctx.body = 'ok';
    // Not awaited: fires after the handler returned, while the 300 ms COMMIT is running.
    setTimeout(() => {
      session.query(`INSERT INTO ${table} (text) VALUES ('late')`).then(
        () => late.push({ ok: true }),
        (error: unknown) => late.push({ error }),
      );
    }, 5);
  });
  const url = await serve(t, app);

  const started = Date.now();
  t.same(await request(url), { status: 200, body: 'ok' });
  t.ok(Date.now() - started >= 250, 'the response waited for the slow COMMIT');
  t.ok(await eventually(() => late.length === 1), 'the late query settled');
  const [outcome] = late;
  t.ok(outcome && 'error' in outcome, 'the late query was not reported done');
  t.type(outcome && 'error' in outcome ? outcome.error : undefined, SessionClosedError);
  t.same(await texts(table), ['response'], 'the response row is committed, the late row is absent');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});
