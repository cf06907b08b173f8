// The testing helpers run the app inside one rolled-back transaction and should behave like
// production there: each request (and each independent session) gets a savepoint of its own,
// commits check deferred constraints, a failed request does not poison the rest of the test,
// and nothing survives the test.
import {
  closeDbSession,
  commitDbSession,
  DbConnect,
  dbSession,
  newNonCtxAtomicSession,
  RequestCtx,
  runInNewCtx,
} from '@context-db/core';
import { putSavepointSessionInCtx, rollbackSession, setTestContext } from '@context-db/core/testing';
import pg from 'pg';
import t, { type Test } from 'tap';
import {
  activity,
  checkedOut,
  createDeferredTable,
  createTable,
  DATABASE_URL,
  testDb,
  texts,
  uniqueName,
} from '../fixtures/db.js';

/** A DbConnect whose connections log every statement they are sent. */
function loggingDb(t: Test): { db: DbConnect; sent: string[]; appName: string } {
  const sent: string[] = [];
  const appName = uniqueName('cdb_log');
  const db = new DbConnect({
    createPool: () => {
      const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 4, application_name: appName });
      pool.on('connect', (client) => {
        const query = client.query;
        client.query = function (this: pg.PoolClient, ...args: unknown[]) {
          // Control statements travel as query objects: their text is what was sent.
          const text = typeof args[0] === 'string' ? args[0] : (args[0] as { text?: unknown } | undefined)?.text;
          if (typeof text === 'string') sent.push(text);
          return Reflect.apply(query, this, args);
        } as typeof client.query;
      });
      return pool;
    },
  });
  t.teardown(() => db.close());
  return { db, sent, appName };
}

/** A request as an adapter runs it: its own context, ended by its status. */
async function request(db: DbConnect, status: number, work: () => Promise<unknown>): Promise<unknown> {
  const rc = RequestCtx.open({ db });
  let error: unknown;
  await rc.run(work).catch((err: unknown) => {
    error = err;
  });
  return (await rc.end(status, error)) ?? error;
}

const insert = async (db: DbConnect, table: string, text: string): Promise<void> => {
  await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
};

t.test(
  "inside the test's transaction the app's commit becomes a savepoint release, and nothing survives",
  async (t) => {
    const { db, sent, appName } = loggingDb(t);
    const table = await createTable(t);
    // App code under test: commits early, then fails and rolls back its second part.
    const appFunction = async () => {
      const session = await dbSession(db);
      await session.query(`INSERT INTO ${table} (text) VALUES ('committed by the app')`);
      await commitDbSession(db);
      await session.query(`INSERT INTO ${table} (text) VALUES ('rolled back by the app')`);
      await session.rollback();
    };
    await setTestContext(() =>
      rollbackSession(db, (testSession) =>
        putSavepointSessionInCtx(db, testSession, async () => {
          await appFunction();
          const { rows } = await testSession.query<{ text: string }>(`SELECT text FROM ${table}`);
          t.same(
            rows.map((r) => r.text),
            ['committed by the app'],
            'the test sees the app work in its transaction',
          );
          t.same(await texts(table), [], 'nobody outside sees it');
        }),
      ),
    );
    t.match(sent, [
      'BEGIN',
      /^SAVEPOINT /,
      /^INSERT/,
      /^SAVEPOINT \w+_check; SET CONSTRAINTS ALL IMMEDIATE; .*RELEASE SAVEPOINT \w+$/,
      /^SAVEPOINT /,
      /^INSERT/,
      /^ROLLBACK TO SAVEPOINT/,
    ]);
    t.notOk(
      sent.some((s) => s.startsWith('COMMIT')),
      'the app never committed for real',
    );
    t.same(await texts(table), [], 'nothing survives the test');
    t.equal(checkedOut(db), 0);
    t.equal((await activity(appName)).idleInTransaction, 0);
  },
);

t.test('closeDbSession inside the testing helpers stays in the test transaction', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  await setTestContext(() =>
    rollbackSession(db, (testSession) =>
      putSavepointSessionInCtx(db, testSession, async () => {
        await insert(db, table, 'before close');
        await commitDbSession(db);
        await closeDbSession(db);
        await insert(db, table, 'after close');
        await commitDbSession(db);
        t.equal(checkedOut(db), 1, 'the app used the test connection only, before and after closing');
      }),
    ),
  );
  t.same(await texts(table), [], 'nothing survives the rolled-back test');
  t.equal(checkedOut(db), 0);
});

t.test('setTestContext rolls back what its context left open; independent sessions stay inside it', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  await setTestContext(async () => {
    await insert(db, table, 'left open');
    await runInNewCtx(() => insert(db, table, 'own ctx'));
    await newNonCtxAtomicSession(db, (s) => s.query(`INSERT INTO ${table} (text) VALUES ('non-ctx')`));
    const { rows } = await (await dbSession(db)).query<{ text: string }>(`SELECT text FROM ${table} ORDER BY id`);
    t.same(
      rows.map((r) => r.text),
      ['left open', 'own ctx', 'non-ctx'],
      'the test sees the committed work of independent sessions, as production would',
    );
    t.equal(checkedOut(db), 1, 'all of it on the test connection');
  });
  t.equal(checkedOut(db), 0, 'the context session was closed');
  t.same(await texts(table), [], 'nothing survives: not even runInNewCtx or newNonCtxSession work');
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a row a request committed early is visible to its runInNewCtx work in a test, as in production', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  await setTestContext(async () => {
    const failure = await request(db, 200, async () => {
      await insert(db, table, 'early');
      await commitDbSession(db);
      const seen = await runInNewCtx(async () =>
        (await (await dbSession(db)).query<{ text: string }>(`SELECT text FROM ${table}`)).rows.map((r) => r.text),
      );
      t.same(seen, ['early'], 'the independent context sees the committed row');
    });
    t.equal(failure, undefined);
  });
  t.same(await texts(table), []);
});

t.test('a deferred-constraint violation fails the request in a test, as its COMMIT would in production', async (t) => {
  const { db } = testDb(t);
  const table = await createDeferredTable(t);
  await setTestContext(() =>
    rollbackSession(db, (testSession) =>
      putSavepointSessionInCtx(db, testSession, async () => {
        const failure = await request(db, 200, async () => {
          const session = await dbSession(db);
          await session.query(`INSERT INTO ${table} (text, key) VALUES ('a', 'same'), ('b', 'same')`);
        });
        t.match(failure, { code: 'COMMIT_FAILED' }, 'the request fails (an adapter answers 500)');
        // One failed request does not poison the rest of the test.
        const next = await request(db, 200, () => insert(db, table, 'after'));
        t.equal(next, undefined, 'the next request commits its savepoint');
        const { rows } = await testSession.query<{ text: string }>(`SELECT text FROM ${table} ORDER BY id`);
        t.same(
          rows.map((r) => r.text),
          ['after'],
          'only the later request is in the test transaction',
        );
        // Deferred constraints are deferred again for later work in the test.
        await testSession.query(`INSERT INTO ${table} (text, key) VALUES ('c', 'dup'), ('d', 'dup')`);
        await testSession.query(`DELETE FROM ${table} WHERE text = 'd'`);
      }),
    ),
  );
  t.same(await texts(table), []);
  t.equal(checkedOut(db), 0);
});

t.test('two concurrent requests in one test each get their own savepoint', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  await setTestContext(() =>
    rollbackSession(db, (testSession) =>
      putSavepointSessionInCtx(db, testSession, async () => {
        let release!: () => void;
        const gate = new Promise<void>((resolve) => {
          release = resolve;
        });
        const ok = request(db, 200, async () => {
          await insert(db, table, 'ok');
          await gate;
        });
        const bad = request(db, 400, async () => {
          await insert(db, table, 'bad');
        });
        setTimeout(release, 50);
        t.same(await Promise.all([ok, bad]), [undefined, undefined]);
        const { rows } = await testSession.query<{ text: string }>(`SELECT text FROM ${table} ORDER BY id`);
        t.same(
          rows.map((r) => r.text),
          ['ok'],
          "the 400 rolled back its own work only, not the 200's",
        );
      }),
    ),
  );
  t.same(await texts(table), []);
});

t.test('a request served inside another request gets a context of its own', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const outer = await request(db, 200, async () => {
    await insert(db, table, 'outer');
    // e.g. a batch endpoint calling app.inject() for each item
    t.equal(await request(db, 500, () => insert(db, table, 'inner failed')), undefined);
    t.equal(await request(db, 200, () => insert(db, table, 'inner ok')), undefined);
    t.same(await texts(table), ['inner ok'], "the inner 200 committed its own work, not the outer's");
  });
  t.equal(outer, undefined);
  t.same((await texts(table)).sort(), ['inner ok', 'outer'], "the inner 500 did not roll back the outer's work");
});

t.test('after setTestContext ends, its context is unusable and nothing it reaches leaks', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  let late!: Promise<unknown>;
  let lateRequest!: Promise<unknown>;
  await setTestContext(async () => {
    await insert(db, table, 'in test');
    late = new Promise((resolve) => setTimeout(resolve, 30)).then(() => insert(db, table, 'late job'));
    lateRequest = new Promise((resolve) => setTimeout(resolve, 30)).then(() =>
      request(db, 200, () => insert(db, table, 'late request')),
    );
  });
  await t.rejects(late, { code: 'SESSION_CLOSED' }, 'a job still running after the test cannot use its context');
  t.match(await lateRequest, { code: 'SESSION_CLOSED' }, 'nor can a request served after the test');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
  t.same(await texts(table), []);
});

t.test('putSavepointSessionInCtx needs a context', async (t) => {
  const { db } = testDb(t);
  await rollbackSession(db, (s) =>
    t.rejects(
      putSavepointSessionInCtx(db, s, () => {}),
      { code: 'CONTEXT_NOT_INITIATED' },
    ),
  );
});
