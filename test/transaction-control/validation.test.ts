// Transaction control (issue #12), from its review; every failure described here failed before its fix option validation. Holes: options read from a prototype (a class with
// getters, Object.create) are silently dropped, so a "read-only" configuration runs read-write;
// `deferrable` is refused when the serializable read-only transaction it needs comes from the
// DbConnect's defaults merged with the block's own fields. What held is checked at the end.
import {
  atomicDbSession,
  DbConnect,
  DbSessionCtx,
  dbSession,
  InvalidOptionsError,
  newNonCtxAtomicSession,
  runInNewCtx,
  type TransactionOptions,
} from '@context-db/core';
import t from 'tap';
import { createTable, DATABASE_URL, testDb, texts } from '../fixtures/db.js';

class ReplicaOptions implements TransactionOptions {
  get readOnly(): boolean {
    return true;
  }
}

t.test('options given as a class with getters are honoured or refused, never dropped', async (t) => {
  const table = await createTable(t);
  let db: DbConnect | undefined;
  try {
    db = new DbConnect({ connectionString: DATABASE_URL, transaction: new ReplicaOptions() });
  } catch (err) {
    t.type(err, InvalidOptionsError, 'refused: fine');
    return;
  }
  t.teardown(() => db?.close());
  const written = await newNonCtxAtomicSession(db, (s) => s.query(`INSERT INTO ${table} (text) VALUES ('w')`)).then(
    () => 'written',
    (err: { code?: string }) => err.code,
  );
  t.equal(written, '25006', 'the read-only option took effect');
  t.same(await texts(table), []);
});

t.test('options inherited through Object.create are honoured or refused, never dropped', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const base: TransactionOptions = { readOnly: true };
  let outcome: string;
  try {
    outcome = await newNonCtxAtomicSession(db, (s) => s.query(`INSERT INTO ${table} (text) VALUES ('w')`), {
      transaction: Object.create(base) as TransactionOptions,
    }).then(
      () => 'written',
      (err: { code?: string; name?: string }) => err.code ?? err.name ?? 'error',
    );
  } catch (err) {
    outcome = (err as Error).name;
  }
  t.not(outcome, 'written', 'a read-only option is not silently turned into read-write');
});

t.test('deferrable is accepted when the DbConnect already makes the transaction serializable', async (t) => {
  const { db } = testDb(t, {}, { transaction: { isolationLevel: 'serializable' } });
  const ctx = new DbSessionCtx();
  const result = await ctx
    .run(() =>
      atomicDbSession(
        db,
        async (s) =>
          (
            await s.query<{ d: string; ro: string; iso: string }>(
              "SELECT current_setting('transaction_deferrable') AS d, current_setting('transaction_read_only') AS ro, current_setting('transaction_isolation') AS iso",
            )
          ).rows[0],
        { transaction: { readOnly: true, deferrable: true } },
      ),
    )
    .catch((err: Error) => `${err.name}: ${err.message}`);
  await ctx.finish();
  t.same(result, { d: 'on', ro: 'on', iso: 'serializable' });
});

// Held: the values the brief listed are refused at configuration time.
t.test('held: NaN, Infinity, huge, negative, fractional and string timeouts; bad retries', async (t) => {
  const { db } = testDb(t);
  for (const value of [Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31, -1, 1.5, '100']) {
    t.throws(
      () => new DbConnect({ connectionString: DATABASE_URL, transaction: { statementTimeout: value as number } }),
      InvalidOptionsError,
      `statementTimeout ${String(value)}`,
    );
  }
  for (const retry of [
    0,
    Number.NaN,
    Number.POSITIVE_INFINITY,
    -1,
    { attempts: 2, bogus: 1 },
    { attempts: 2, minDelayMs: 10, maxDelayMs: 5 },
  ]) {
    await t.rejects(
      newNonCtxAtomicSession(db, () => 1, { retry: retry as number }),
      InvalidOptionsError,
      `retry ${JSON.stringify(retry)}`,
    );
    await t.rejects(
      runInNewCtx({ retry: retry as number }, () => 1),
      InvalidOptionsError,
    );
  }
  // JSON's own "__proto__" key is an own property: refused as unknown, not merged into the prototype.
  t.throws(
    () =>
      new DbConnect({ connectionString: DATABASE_URL, transaction: JSON.parse('{"__proto__": {"readOnly": true}}') }),
    InvalidOptionsError,
  );
  // A frozen options object is accepted and not modified.
  const frozen = Object.freeze({ isolationLevel: 'repeatable read', readOnly: true } as const);
  const ctx = new DbSessionCtx();
  const level = await ctx.run(() =>
    atomicDbSession(
      db,
      async (s) => (await s.query<{ v: string }>("SELECT current_setting('transaction_isolation') AS v")).rows[0]?.v,
      { transaction: frozen },
    ),
  );
  await ctx.finish();
  t.equal(level, 'repeatable read');
  t.same(frozen, { isolationLevel: 'repeatable read', readOnly: true });
  // An object passed to runInNewCtx as its first argument is the options form, and it says so.
  await t.rejects(
    runInNewCtx({ user: 1 } as never, () => 1),
    /unknown option "user"/,
  );
  t.equal(
    await runInNewCtx((o: { user: number }) => o.user, { user: 7 }),
    7,
    'fn first: an object argument is passed on',
  );
  void dbSession;
});
