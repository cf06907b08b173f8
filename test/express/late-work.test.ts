// DESIGN.md "Rules": a session used after its context finished fails with SessionClosedError
// (issue 10 item 1). From the moment the request's context starts finishing, new work on its
// sessions fails; it is never run, reported done, and then rolled back. A COMMIT slowed by a
// deferred constraint trigger keeps the finish open long enough for the handler's late query.
import { dbSession, SessionClosedError } from '@context-db/core';
import { contextDb } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { activity, admin, checkedOut, createTable, eventually, testDb, texts, uniqueName } from '../fixtures/db.js';
import { deferred, listen, majors, request } from '../fixtures/express.js';

/** A table whose COMMIT takes 0.3 s: a deferred constraint trigger sleeps at commit time. */
async function createSlowCommitTable(t: Parameters<typeof createTable>[0]): Promise<string> {
  const table = await createTable(t);
  const fn = uniqueName('sleep_at_commit');
  await admin.query(`CREATE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$`);
  await admin.query(`CREATE CONSTRAINT TRIGGER ${fn} AFTER INSERT ON ${table}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ${fn}()`);
  t.teardown(async () => {
    await admin.query(`DROP TABLE IF EXISTS ${table}`);
    await admin.query(`DROP FUNCTION IF EXISTS ${fn}()`);
  });
  return table;
}

for (const { name, express } of majors) {
  t.test(`${name}: a query fired after res.json() while the COMMIT runs fails with SessionClosedError`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createSlowCommitTable(t);
    const late = deferred<unknown>();
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    app.post('/', (_req: Request, res: Response, next: NextFunction) => {
      (async () => {
        const session = await dbSession(db);
        await session.query(`INSERT INTO ${table} (text) VALUES ('response')`);
        res.json({ saved: true });
        // Work the handler keeps doing after its response, while the COMMIT sleeps.
        setTimeout(() => {
          session.query(`INSERT INTO ${table} (text) VALUES ('late')`).then(
            () => late.resolve('reported done'),
            (err: unknown) => late.resolve(err),
          );
        }, 5);
      })().catch(next);
    });
    const url = await listen(t, app);
    const reply = await request(url);
    t.equal(reply.status, 200);
    const lateOutcome = await late.promise;
    t.type(lateOutcome, SessionClosedError, 'the late query fails with SessionClosedError');
    t.same(await texts(table), ['response'], "the response's row is committed, the late row is absent");
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
  });
}
