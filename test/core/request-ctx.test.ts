// What every adapter relies on: RequestCtx (a context of its own per request, savepoints inside a
// test's, resume over a foreign one, end, abort), runOutsideCtx and the option checks.
import {
  ClientAbortedError,
  DbSessionCtx,
  dbSession,
  isContextInitiated,
  RequestCtx,
  runInNewCtx,
  runOutsideCtx,
  validateContextDbOptions,
} from '@context-db/core';
import { putSavepointSessionInCtx, rollbackSession, setTestContext } from '@context-db/core/testing';
import t from 'tap';
import { checkedOut, createDeferredTable, createTable, eventually, testDb, texts } from '../fixtures/db.js';

t.test('an own context: end commits or rolls back and releases; a failed commit is returned, not thrown', async (t) => {
  const { db } = testDb(t);
  const table = await createDeferredTable(t);
  const request = async (key: string, status: number) => {
    const rc = RequestCtx.open({ db });
    await rc.run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (key, text) VALUES ($1, $1)`, [key]));
    return rc.end(status);
  };
  t.equal(await request('a', 201), undefined);
  t.equal(await request('b', 409), undefined, 'a rollback is an outcome that stands');
  t.match(await request('a', 200), { code: 'COMMIT_FAILED' }, 'the duplicate fails at COMMIT');
  t.same(await texts(table), ['a']);
  t.equal(checkedOut(db), 0);
});

t.test("inside a test's context each request ends its own savepoint", async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const request = async (text: string, status: number) => {
    const rc = RequestCtx.open({ db });
    await rc.run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]));
    return rc.end(status);
  };
  await setTestContext(() =>
    rollbackSession(db, (session) =>
      putSavepointSessionInCtx(db, session, async () => {
        t.equal(await request('kept', 200), undefined);
        t.equal(await request('rolled back', 500), undefined);
        t.equal(await request('kept too', 200), undefined);
        const { rows } = await session.query<{ text: string }>(`SELECT text FROM ${table} ORDER BY id`);
        t.same(
          rows.map((r) => r.text),
          ['kept', 'kept too'],
          "the failed request's savepoint was rolled back, the others' released",
        );
      }),
    ),
  );
  t.same(await texts(table), [], 'and the test rolled everything back');
  t.equal(checkedOut(db), 0);
});

t.test('run resumes the request context where another one is current; a finished context is not joined', async (t) => {
  const { db } = testDb(t);
  const mine = RequestCtx.open({ db });
  const mySession = await mine.run(() => dbSession(db));
  const other = new DbSessionCtx();
  await other.run(async () => {
    t.equal(await mine.run(() => dbSession(db)), mySession, "a callback parked by one request, run on another's stack");
  });
  await Promise.all([mine.end(200), other.finish()]);

  let server: RequestCtx | undefined;
  await runInNewCtx(() => {
    // e.g. a server started inside runInNewCtx: its requests arrive after that context finished
    setImmediate(() => (server = RequestCtx.open({ db })));
  });
  await new Promise((resolve) => setImmediate(resolve));
  t.ok(server);
  const session = await server?.run(() => dbSession(db));
  t.notOk(session?.closed, 'a fresh context, not the finished one');
  await server?.end(200);
});

t.test('abort rolls back and releases at once; the handler then gets SessionClosedError', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const rc = RequestCtx.open({ db });
  const session = await rc.run(async () => {
    const s = await dbSession(db);
    await s.query(`INSERT INTO ${table} (text) VALUES ('aborted')`);
    return s;
  });
  rc.abort();
  await t.rejects(session.query('SELECT 1'), { code: 'SESSION_CLOSED' }, 'refused at once, not after the rollback');
  t.ok(await eventually(() => checkedOut(db) === 0, 500), 'released within the ROLLBACK round trip');
  t.same(await texts(table), []);
  t.equal(await rc.end(200), undefined, 'the later end finds it finished');
  t.ok(new ClientAbortedError().message.includes('rolled back'));
});

t.test('runOutsideCtx leaves the context for fn only', async (t) => {
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    t.equal(
      runOutsideCtx(() => isContextInitiated()),
      false,
    );
    t.ok(isContextInitiated());
  });
  await ctx.finish();
});

t.test('adapter options are checked with a message that names the fix', async (t) => {
  const { db } = testDb(t);
  t.doesNotThrow(() => validateContextDbOptions(undefined, 'contextDb()'), 'no options: a context per request');
  t.doesNotThrow(() => validateContextDbOptions({}, 'contextDb()'), 'no default database');
  t.throws(() => validateContextDbOptions(42, 'contextDb()'), /contextDb\(\) takes an options object/);
  t.throws(() => validateContextDbOptions({ db: 'postgres://x' }, 'contextDb()'), /got string/);
  t.throws(() => validateContextDbOptions({ db, commitOn: 400 }, 'contextDb()'), /options.commitOn must be a function/);
  t.throws(() => validateContextDbOptions({ db, skip: true }, 'contextDb()', ['skip']), /options.skip must be/);
  t.doesNotThrow(() => validateContextDbOptions({ db, beforeCommit: () => {} }, 'contextDb()'));
});
