// Transaction options: isolation level, access mode, deferrable and timeouts reach PostgreSQL in
// the BEGIN's own round trip, from the DbConnect, a context (a route, runInNewCtx), an atomic
// block or a non-context session; bad values are refused where they are configured, and options
// set on a session whose transaction is open are an error, not a silent no-op.
import {
  atomicDbSession,
  DbConnect,
  DbSessionCtx,
  dbSession,
  InvalidOptionsError,
  newNonCtxAtomicSession,
  runInNewCtx,
  TransactionAlreadyOpenError,
  type TransactionOptions,
} from '@context-db/core';
import pg from 'pg';
import t from 'tap';
import { checkedOut, createTable, DATABASE_URL, testDb, texts } from '../fixtures/db.js';

interface Settings {
  isolation: string;
  readOnly: string;
  deferrable: string;
  statementTimeout: string;
  lockTimeout: string;
  idleTimeout: string;
}

const SETTINGS = `SELECT current_setting('transaction_isolation') AS isolation,
  current_setting('transaction_read_only') AS "readOnly",
  current_setting('transaction_deferrable') AS deferrable,
  current_setting('statement_timeout') AS "statementTimeout",
  current_setting('lock_timeout') AS "lockTimeout",
  current_setting('idle_in_transaction_session_timeout') AS "idleTimeout"`;

async function settings(): Promise<Settings> {
  const db = current;
  const { rows } = await (await dbSession(db)).query<Settings>(SETTINGS);
  return rows[0] as Settings;
}

let current: DbConnect;

const DEFAULTS = {
  isolation: 'read committed',
  readOnly: 'off',
  deferrable: 'off',
  statementTimeout: '0',
  lockTimeout: '0',
  idleTimeout: '0',
};

/** A DbConnect whose pool records every statement string its connections are sent. */
function recording(t: Parameters<typeof testDb>[0], options: { transaction?: TransactionOptions } = {}) {
  const sent: string[] = [];
  const db = new DbConnect({
    createPool: () => {
      const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 4 });
      pool.on('connect', (client) => {
        const query = client.query.bind(client) as (...args: unknown[]) => unknown;
        (client as { query: unknown }).query = (...args: unknown[]) => {
          const text = args[0];
          sent.push(typeof text === 'string' ? text : String((text as { text?: unknown }).text));
          return query(...args);
        };
      });
      return pool;
    },
    ...options,
  });
  t.teardown(() => db.close());
  current = db;
  return { db, sent };
}

t.test('a session without options runs READ COMMITTED read-write with no timeouts', async (t) => {
  const { db } = recording(t);
  const ctx = new DbSessionCtx();
  t.same(await ctx.run(settings), DEFAULTS);
  await ctx.finish();
  t.equal(checkedOut(db), 0);
});

t.test('options of the DbConnect reach every transaction, in the BEGIN round trip', async (t) => {
  const { db, sent } = recording(t, {
    transaction: {
      isolationLevel: 'repeatable read',
      statementTimeout: 1500,
      lockTimeout: 250,
      idleInTransactionTimeout: 60_000,
    },
  });
  const ctx = new DbSessionCtx();
  t.same(await ctx.run(settings), {
    ...DEFAULTS,
    isolation: 'repeatable read',
    statementTimeout: '1500ms',
    lockTimeout: '250ms',
    idleTimeout: '1min',
  });
  await ctx.finish();
  // BEGIN (with its SET LOCALs), the query, COMMIT: the same three flights as without options.
  t.equal(sent.length, 3, sent.join('\n'));
  t.match(sent[0], /^BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL statement_timeout = 1500; /);
  // SET LOCAL ends with the transaction: the next one on the same connection starts clean.
  const { rows } = await db.pool().query<{ timeout: string }>("SELECT current_setting('statement_timeout') AS timeout");
  t.equal(rows[0]?.timeout, '0');
});

t.test('a context (a route, runInNewCtx) overrides the DbConnect field by field', async (t) => {
  recording(t, { transaction: { isolationLevel: 'repeatable read', statementTimeout: 1500 } });
  const ctx = new DbSessionCtx();
  ctx.setTransactionOptions({ readOnly: true, statementTimeout: 0 });
  t.same(await ctx.run(settings), { ...DEFAULTS, isolation: 'repeatable read', readOnly: 'on', statementTimeout: '0' });
  await ctx.finish();

  const viaNewCtx = await runInNewCtx({ transaction: { isolationLevel: 'serializable' } }, settings);
  t.same(viaNewCtx, { ...DEFAULTS, isolation: 'serializable', statementTimeout: '1500ms' });
  // The plain form still passes its arguments through.
  t.equal(await runInNewCtx((a: number, b: number) => a + b, 2, 3), 5);
});

t.test('an atomic block applies its options to its own transaction only', async (t) => {
  const { db } = recording(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    const inside = await atomicDbSession(db, settings, {
      transaction: { isolationLevel: 'serializable', readOnly: true, deferrable: true },
    });
    t.same(inside, { ...DEFAULTS, isolation: 'serializable', readOnly: 'on', deferrable: 'on' });
    t.same(await settings(), DEFAULTS, 'the request transaction after the block has the session options');
  });
  await ctx.finish();
  const nonCtx = await newNonCtxAtomicSession(
    db,
    async (session) => (await session.query<Settings>(SETTINGS)).rows[0],
    { transaction: { isolationLevel: 'repeatable read', lockTimeout: 100 } },
  );
  t.same(nonCtx, { ...DEFAULTS, isolation: 'repeatable read', lockTimeout: '100ms' });
  t.equal(checkedOut(db), 0);
});

t.test('a write in a read-only transaction fails with 25006 and writes nothing', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  ctx.setTransactionOptions({ readOnly: true });
  const err = await ctx.run(async () =>
    (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('x')`).catch((e: unknown) => e),
  );
  t.match(err, { code: '25006' });
  await ctx.finish({ error: err });
  t.same(await texts(table), []);
});

t.test('a statement timeout cancels the statement with 57014', async (t) => {
  const { db } = testDb(t, {}, { transaction: { statementTimeout: 50 } });
  const err = await runInNewCtx(async () => (await dbSession(db)).query('SELECT pg_sleep(2)')).catch((e: unknown) => e);
  t.match(err, { code: '57014' });
  t.equal(checkedOut(db), 0);
});

t.test('options set once a transaction is open are refused', async (t) => {
  const { db } = testDb(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    const session = await dbSession(db);
    await session.query('SELECT 1');
    t.throws(() => session.setTransactionOptions({ readOnly: true }), TransactionAlreadyOpenError);
    t.throws(() => ctx.setTransactionOptions({ readOnly: true }), TransactionAlreadyOpenError);
    await t.rejects(
      atomicDbSession(db, async () => 1, { currentTransaction: 'append', transaction: { readOnly: true } }),
      TransactionAlreadyOpenError,
    );
    await t.rejects(
      atomicDbSession(db, async () => 1, { currentTransaction: 'nested', transaction: { readOnly: true } }),
      TransactionAlreadyOpenError,
    );
    // A query sent but not yet begun counts as open too: its BEGIN may already be on its way.
    await session.commit();
    const pending = session.query('SELECT 1');
    t.throws(() => session.setTransactionOptions({ readOnly: true }), TransactionAlreadyOpenError);
    await pending;
  });
  await ctx.finish();
  t.equal(checkedOut(db), 0);
});

t.test('bad option values are refused where they are configured, naming the fix', async (t) => {
  const { db } = testDb(t);
  const bad: Array<[unknown, RegExp]> = [
    [
      { isolationLevel: 'SERIALIZABLE' },
      /isolationLevel must be one of 'read committed', 'repeatable read', 'serializable'/,
    ],
    [{ isolation: 'serializable' }, /unknown transaction option "isolation"/],
    [{ statementTimeout: -1 }, /statementTimeout must be a whole number of milliseconds/],
    [{ lockTimeout: 1.5 }, /lockTimeout must be a whole number/],
    [{ readOnly: 'yes' }, /readOnly must be true or false/],
    [
      { deferrable: true, isolationLevel: 'serializable', readOnly: false },
      /deferrable only has an effect on a serializable read-only/,
    ],
    [{ deferrable: true, isolationLevel: 'repeatable read' }, /deferrable only has an effect/],
    ['serializable', /transaction options must be an object/],
  ];
  for (const [options, message] of bad) {
    t.throws(
      () => new DbConnect({ connectionString: DATABASE_URL, transaction: options as TransactionOptions }),
      { name: 'InvalidOptionsError', message },
      JSON.stringify(options),
    );
    t.throws(() => new DbSessionCtx().setTransactionOptions(options as TransactionOptions), InvalidOptionsError);
    await t.rejects(
      runInNewCtx(() => atomicDbSession(db, async () => 1, { transaction: options as TransactionOptions })),
      InvalidOptionsError,
    );
  }
  await t.rejects(
    newNonCtxAtomicSession(db, async () => 1, { retry: 0 }),
    /retry attempts must be a whole number >= 1/,
  );
  await t.rejects(
    runInNewCtx(() => atomicDbSession(db, async () => 1, { currentTransaction: 'append', retry: 3 })),
    /retry needs a block that owns its transaction/,
  );
  await t.rejects(
    runInNewCtx({ retries: 3 } as never, async () => 1),
    /unknown option "retries"/,
  );
  t.equal(checkedOut(db), 0);
});
