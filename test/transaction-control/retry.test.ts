// Transaction control (issue #12), from its review; every failure described here failed before its fix retries. "Re-runs fn ... when the transaction fails with SQLSTATE 40001 or
// 40P01, including at COMMIT." When fn catches the 40001 of a statement and goes on (a
// best-effort write in try/catch, an ORM that logs and continues), PostgreSQL answers the COMMIT
// of the aborted transaction with ROLLBACK; the CommitFailedError built for that carries no cause,
// so isRetryable() does not see the serialization failure and the block is not retried.
import { dbSession, onCommit, onRollback, runInNewCtx } from '@context-db/core';
import pg from 'pg';
import t from 'tap';
import { admin, checkedOut, createTable, DATABASE_URL, eventually, testDb } from '../fixtures/db.js';

t.test('a 40001 swallowed inside the block still makes the block retry', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t, 'n int NOT NULL DEFAULT 0');
  await admin.query(`INSERT INTO ${table} (text, n) VALUES ('counter', 0)`);
  const other = new pg.Client({ connectionString: DATABASE_URL });
  await other.connect();
  t.teardown(() => other.end());
  const swallowed: string[] = [];
  const committed: number[] = [];
  let attempts = 0;
  const outcome = await runInNewCtx({ transaction: { isolationLevel: 'repeatable read' }, retry: 3 }, async () => {
    attempts++;
    const s = await dbSession(db);
    await s.query(`SELECT n FROM ${table}`); // the snapshot
    await onCommit(db, () => void committed.push(attempts));
    if (attempts === 1) {
      // Another transaction changes the row after our snapshot and commits while we wait for it.
      await other.query(`BEGIN; UPDATE ${table} SET n = n + 100`);
      const waiting = eventually(async () => {
        const { rowCount } = await admin.query(
          "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
          [appName],
        );
        return rowCount === 1;
      }).then(() => other.query('COMMIT'));
      try {
        await s.query(`UPDATE ${table} SET n = n + 1`);
      } catch (err) {
        swallowed.push((err as { code?: string }).code ?? 'no code'); // best effort: logged, not rethrown
      }
      await waiting;
      return;
    }
    await s.query(`UPDATE ${table} SET n = n + 1`);
  }).then(
    () => 'committed',
    (err: Error) => `${err.name}: ${err.message}`,
  );
  t.same(swallowed, ['40001'], 'the first attempt hit a serialization failure');
  t.equal(outcome, 'committed', 'the block was retried and committed');
  t.equal(attempts, 2);
  t.same(committed, [2], 'only the attempt that committed ran its onCommit hook');
  t.equal(checkedOut(db), 0);
});

// Held: hooks with a COMMIT-time 40001 across runInNewCtx retries.
t.test('held: runInNewCtx retried at COMMIT runs onRollback per failed attempt and onCommit once', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t, 'n int NOT NULL DEFAULT 0');
  await admin.query(`INSERT INTO ${table} (text, n) VALUES ('a', 0), ('b', 0)`);
  const events: string[] = [];
  // Two serializable write-skew transactions: each reads both rows and updates one; one of them
  // fails (at its UPDATE or at COMMIT) and is retried.
  let gate!: () => void;
  const bothRead = new Promise<void>((resolve) => {
    let n = 0;
    gate = () => {
      if (++n === 2) resolve();
    };
  });
  const run = (name: string, row: string) =>
    runInNewCtx({ transaction: { isolationLevel: 'serializable' }, retry: 5 }, async () => {
      const s = await dbSession(db);
      await onCommit(db, () => void events.push(`${name} commit`));
      await onRollback(db, () => void events.push(`${name} rollback`));
      await s.query(`SELECT sum(n) FROM ${table}`);
      gate();
      await bothRead;
      await s.query(`UPDATE ${table} SET n = n + 1 WHERE text = $1`, [row]);
    });
  await Promise.all([run('x', 'a'), run('y', 'b')]);
  t.equal(events.filter((e) => e.endsWith('commit')).length, 2, 'each committed once');
  t.ok(
    events.some((e) => e.endsWith('rollback')),
    'a failed attempt ran its onRollback',
  );
});
