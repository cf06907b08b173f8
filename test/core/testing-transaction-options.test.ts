// Transaction options inside a test's transaction (setTestContext): a request's transaction is a
// savepoint there, so read-only and the timeouts apply to it and must not outlive it; nested
// blocks and hooks behave as in production.
import { atomicDbSession, dbSession, onCommit, RequestCtx } from '@context-db/core';
import { setTestContext } from '@context-db/core/testing';
import t from 'tap';
import { checkedOut, createTable, testDb, texts } from '../fixtures/db.js';

t.test('a read-only request in a test context cannot write, and leaves the test able to', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  await setTestContext(async () => {
    await insert('test fixture');
    // A request, as an adapter opens it inside the test's context, with route options.
    const rc = RequestCtx.open({ db });
    rc.setTransactionOptions({ readOnly: true, statementTimeout: 1234 });
    const seen = await rc.run(async () => {
      const { rows } = await (await dbSession(db)).query<{ ro: string; st: string }>(
        "SELECT current_setting('transaction_read_only') AS ro, current_setting('statement_timeout') AS st",
      );
      const write = await insert('request write').catch((err: { code?: string }) => err.code);
      return { ...rows[0], write };
    });
    t.same(seen, { ro: 'on', st: '1234ms', write: '25006' });
    t.equal(await rc.end(500), undefined);

    const ok = RequestCtx.open({ db });
    ok.setTransactionOptions({ readOnly: true, statementTimeout: 1234 });
    await ok.run(async () => (await dbSession(db)).query('SELECT 1'));
    t.equal(await ok.end(200), undefined, 'a read-only request commits (its savepoint had nothing to keep)');

    // The test's own transaction goes on, read-write and without the request's timeout.
    await insert('after the requests');
    const { rows } = await (await dbSession(db)).query<{ ro: string; st: string }>(
      "SELECT current_setting('transaction_read_only') AS ro, current_setting('statement_timeout') AS st",
    );
    t.same(rows[0], { ro: 'off', st: '0' });
    t.same(
      (await (await dbSession(db)).query<{ text: string }>(`SELECT text FROM ${table} ORDER BY id`)).rows.map(
        (r) => r.text,
      ),
      ['test fixture', 'after the requests'],
    );
  });
  t.same(await texts(table), [], 'nothing survives the test');
  t.equal(checkedOut(db), 0);
});

t.test('nested blocks and onCommit in a request inside a test context', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const ran: string[] = [];
  await setTestContext(async () => {
    const rc = RequestCtx.open({ db });
    await rc.run(async () => {
      await insert('before');
      await atomicDbSession(
        db,
        async () => {
          await insert('dropped');
          throw new Error('inner');
        },
        { currentTransaction: 'nested' },
      ).catch(() => {});
      await onCommit(db, () => ran.push('committed'));
    });
    t.equal(await rc.end(200), undefined);
    t.same(ran, ['committed']);
    t.same(
      (await (await dbSession(db)).query<{ text: string }>(`SELECT text FROM ${table} ORDER BY id`)).rows.map(
        (r) => r.text,
      ),
      ['before'],
    );
  });
  t.same(await texts(table), []);
});
