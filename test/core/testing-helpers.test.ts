import { commitDbSession, dbSession, runInNewCtx } from '@context-db/core';
import { putSavepointSessionInCtx, rollbackSession, setTestContext } from '@context-db/core/testing';
import t from 'tap';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';

t.test(
  "inside the test's transaction the app's commit becomes a savepoint release, and nothing survives",
  async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const statements: string[] = [];
    // App code under test: commits early, then fails and rolls back its second part.
    const appFunction = async () => {
      const session = await dbSession(db);
      await session.query(`INSERT INTO ${table} (text) VALUES ('committed by the app')`);
      await commitDbSession(db);
      await session.query(`INSERT INTO ${table} (text) VALUES ('rolled back by the app')`);
      await session.rollback();
    };
    await setTestContext(() =>
      rollbackSession(db, async (testSession) => {
        const client = await testSession.client();
        const query = client.query.bind(client);
        client.query = ((...args: Parameters<typeof query>) => {
          if (typeof args[0] === 'string') statements.push(args[0]);
          return query(...args);
        }) as typeof client.query;
        await putSavepointSessionInCtx(db, testSession, async () => {
          await appFunction();
          const { rows } = await testSession.query<{ text: string }>(`SELECT text FROM ${table}`);
          t.same(
            rows.map((r) => r.text),
            ['committed by the app'],
            'the test sees the app work in its transaction',
          );
          t.same(await texts(table), [], 'nobody outside sees it');
        });
        client.query = query;
      }),
    );
    t.match(statements, [
      /^SAVEPOINT /,
      /^INSERT/,
      /^RELEASE SAVEPOINT /,
      /^SAVEPOINT /,
      /^INSERT/,
      /^ROLLBACK TO SAVEPOINT/,
    ]);
    t.notOk(statements.includes('COMMIT'), 'the app never committed for real');
    t.same(await texts(table), [], 'nothing survives the test');
    t.equal(checkedOut(db), 0);
    t.equal((await activity(appName)).idleInTransaction, 0);
  },
);

t.test('setTestContext closes what the app left open, and work in runInNewCtx is real', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  await setTestContext(async () => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('left open')`);
    await runInNewCtx(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('own ctx')`));
  });
  t.equal(checkedOut(db), 0, 'the context session was closed');
  t.same(await texts(table), ['own ctx'], 'what the context left open was rolled back');
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
