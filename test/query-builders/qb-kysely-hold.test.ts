// A Kysely transaction() holds the request's session through
// AsyncLocalStorage.enterWith in the driver's beginTransaction. Attacks where the entered store
// could leak (code beside the transaction, timers made inside it, a later request), nesting
// (atomicDbSession, transaction() in transaction(), runInNewCtx), callbacks that throw at once,
// setIsolationLevel inside a request, concurrency in one request, and controlled transactions
// (never ended, ended after the request, used from another request). Real PostgreSQL, Fastify.
import { atomicDbSession, dbSession, runInNewCtx } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import { ContextDbDialect } from '@context-db/kysely';
import Fastify from 'fastify';
import { type ControlledTransaction, type Generated, Kysely } from 'kysely';
import t, { type Test } from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

interface Database {
  [table: string]: { id: Generated<number>; text: string };
}

const { db, appName } = testDb(t);
const kdb = new Kysely<Database>({ dialect: new ContextDbDialect({ db }) });

/** A test that ends with nothing checked out and nothing idle in transaction. */
function check(name: string, options: { todo?: string }, fn: (t: Test) => Promise<void>): void {
  t.test(name, options, async (t) => {
    await fn(t);
    t.ok(await eventually(() => checkedOut(db) === 0), 'no connection checked out');
    t.equal((await activity(appName)).idleInTransaction, 0, 'no connection idle in transaction');
  });
}

const insert = (table: string, text: string, on: Kysely<Database> = kdb) =>
  on.insertInto(table).values({ text }).execute();
const raw = async (table: string, text: string) =>
  (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const failed = (err: unknown) => `failed: ${(err as Error)?.constructor?.name} ${(err as Error)?.message}`;

/** Run `fn` with a 5 s limit, so that a hang is a failure and not a stuck suite. */
function limited<R>(fn: Promise<R>, ms = 5000): Promise<R | 'hung'> {
  return Promise.race([fn, sleep(ms).then(() => 'hung' as const)]);
}

async function app(t: Test, routes: Record<string, () => Promise<unknown>>) {
  const fastify = Fastify();
  t.teardown(() => fastify.close());
  await fastify.register(contextDbPlugin, { db });
  for (const [name, route] of Object.entries(routes)) fastify.post(`/${name}`, async () => route());
  return async (name: string) => {
    const res = await fastify.inject({ method: 'POST', url: `/${name}` });
    return res.statusCode;
  };
}

check(
  'a timer made inside a transaction() fires during a later one that throws: its write is not rolled back with it',
  {},
  async (t) => {
    const table = await createTable(t);
    const outcome = await runInNewCtx(async () => {
      let late!: Promise<unknown>;
      await kdb.transaction().execute(async (trx) => {
        await insert(table, 'a', trx);
        late = new Promise((resolve, reject) => setTimeout(() => raw(table, 'late').then(resolve, reject), 50));
      });
      const b = kdb
        .transaction()
        .execute(async (trx) => {
          await insert(table, 'b-rolled-back', trx);
          await sleep(200);
          throw new Error('b fails');
        })
        .catch(() => 'b rolled back');
      return Promise.all([b, late.then(() => 'late done')]);
    });
    t.same(outcome, ['b rolled back', 'late done']);
    t.same((await texts(table)).sort(), ['a', 'late']);
  },
);

check(
  'code after an awaited transaction() is not inside it: work beside a later transaction waits for it',
  {},
  async (t) => {
    const table = await createTable(t);
    await runInNewCtx(async () => {
      await kdb.transaction().execute((trx) => insert(table, 'first', trx));
      const b = kdb
        .transaction()
        .execute(async (trx) => {
          await insert(table, 'b-rolled-back', trx);
          await sleep(100);
          throw new Error('b fails');
        })
        .catch(() => undefined);
      await sleep(20); // b's savepoint is open now
      await raw(table, 'beside');
      await b;
    });
    t.same((await texts(table)).sort(), ['beside', 'first']);
  },
);

// Kysely's connection(): the transaction's connection is already provided, so TransactionBuilder.execute
// calls the driver's beginTransaction synchronously from the caller's own frame: the enterWith lands
// in the caller, whose code beside the transaction then runs inside it.
check(
  'kdb.connection(): a raw write beside a transaction() begun on the connection is refused, not rolled back with it',
  {},
  async (t) => {
    // Kysely begins this transaction synchronously from the caller's frame: the hold cannot be
    // scoped to the callback, so work outside it is refused (it cannot wait for code that may
    // be the one waiting), and the request rolls back whole: nothing half-kept.
    const table = await createTable(t);
    const outcome = await limited(
      runInNewCtx(() =>
        kdb.connection().execute(async (conn) => {
          const inner = conn
            .transaction()
            .execute(async (trx) => {
              await insert(table, 'inner-rolled-back', trx);
              await sleep(100);
              throw new Error('inner fails');
            })
            .catch(() => 'inner rolled back');
          try {
            await raw(table, 'beside'); // the request's own write, made beside the transaction
          } finally {
            await inner;
          }
          return 'written';
        }),
      ).catch(failed),
    );
    t.match(
      outcome,
      /^failed: TransactionAlreadyOpenError .*kdb\.connection\(\)/,
      'the write beside is refused, naming why',
    );
    t.same(await texts(table), [], 'nothing committed: neither the inner work nor the refused write');
  },
);

check('kdb.connection(): code after an awaited transaction() on it is not left inside an ended hold', {}, async (t) => {
  const table = await createTable(t);
  const outcome = await limited(
    runInNewCtx(() =>
      kdb.connection().execute(async (conn) => {
        await conn.transaction().execute((trx) => insert(table, 'a', trx));
        await conn.transaction().execute((trx) => insert(table, 'b', trx));
        await raw(table, 'after');
        return 'ok';
      }),
    ).catch(failed),
  );
  t.equal(outcome, 'ok');
  t.same(await texts(table), ['a', 'b', 'after']);
});

check('a transaction() inside atomicDbSession that throws rolls back only its own work', {}, async (t) => {
  const table = await createTable(t);
  const status = await (
    await app(t, {
      async route() {
        await raw(table, 'request');
        await atomicDbSession(
          db,
          async () => {
            await raw(table, 'atomic');
            await kdb
              .transaction()
              .execute(async (trx) => {
                await insert(table, 'inner-rolled-back', trx);
                throw new Error('inner fails');
              })
              .catch(() => undefined);
            await raw(table, 'atomic-after');
          },
          { currentTransaction: 'nested' },
        );
        return { ok: true };
      },
    })
  )('route');
  t.equal(status, 200);
  t.same(await texts(table), ['request', 'atomic', 'atomic-after']);
});

check('transaction() inside transaction() (through kdb): the inner rollback keeps the outer work', {}, async (t) => {
  const table = await createTable(t);
  await runInNewCtx(async () => {
    await kdb.transaction().execute(async (trx) => {
      await insert(table, 'outer', trx);
      await kdb
        .transaction()
        .execute(async (inner) => {
          await insert(table, 'inner-rolled-back', inner);
          throw new Error('inner fails');
        })
        .catch(() => undefined);
      await insert(table, 'outer-after', trx);
    });
  });
  t.same(await texts(table), ['outer', 'outer-after']);
});

check('a transaction() begun in runInNewCtx inside a request holds only that context’s session', {}, async (t) => {
  const table = await createTable(t);
  const status = await (
    await app(t, {
      async route() {
        const branch = runInNewCtx(() =>
          kdb.transaction().execute(async (trx) => {
            await insert(table, 'branch', trx);
            await sleep(100);
          }),
        );
        await sleep(20);
        const pid = (await (await dbSession(db)).query('SELECT pg_backend_pid() AS pid')).rows[0]?.pid;
        await raw(table, 'request');
        await branch;
        return { pid };
      },
    })
  )('route');
  t.equal(status, 200);
  t.same((await texts(table)).sort(), ['branch', 'request']);
});

check('a callback that throws synchronously rolls back and lets the request go on', {}, async (t) => {
  const table = await createTable(t);
  const status = await (
    await app(t, {
      async route() {
        await raw(table, 'before');
        const thrown = await kdb
          .transaction()
          .execute((() => {
            throw new Error('at once');
          }) as unknown as () => Promise<void>)
          .catch((err: Error) => err.message);
        await limited(raw(table, 'after'));
        return { thrown };
      },
    })
  )('route');
  t.equal(status, 200);
  t.same(await texts(table), ['before', 'after']);
});

check('setIsolationLevel as the request’s first work begins the request’s transaction with it', {}, async (t) => {
  const table = await createTable(t);
  let level = '';
  const call = await app(t, {
    async first() {
      level = await kdb
        .transaction()
        .setIsolationLevel('serializable')
        .execute(async (trx) => {
          await insert(table, 'serializable', trx);
          return (await (await dbSession(db)).query('SHOW transaction_isolation')).rows[0]?.transaction_isolation;
        });
      await raw(table, 'after');
      return {};
    },
  });
  t.equal(await call('first'), 200);
  t.equal(level, 'serializable');
  t.same(await texts(table), ['serializable', 'after']);
});

check('setIsolationLevel after a query of the request is refused; the request then commits', {}, async (t) => {
  const table = await createTable(t);
  let refused = '';
  const call = await app(t, {
    async late() {
      await raw(table, 'late-before');
      refused = await kdb
        .transaction()
        .setIsolationLevel('serializable')
        .execute(async (trx) => {
          await insert(table, 'never', trx);
        })
        .then(
          () => 'ran',
          (err: Error) => err.constructor.name,
        );
      await limited(raw(table, 'late-after'));
      return {};
    },
  });
  t.equal(await call('late'), 200);
  t.equal(refused, 'TransactionAlreadyOpenError');
  t.same(await texts(table), ['late-before', 'late-after']);
});

check(
  'two concurrent transactions and a raw write in one request: only the one that throws rolls back',
  {},
  async (t) => {
    const table = await createTable(t);
    const call = await app(t, {
      async route() {
        const results = await limited(
          Promise.all([
            kdb
              .transaction()
              .execute(async (trx) => {
                await insert(table, 'a-rolled-back', trx);
                await sleep(30);
                throw new Error('a fails');
              })
              .catch(() => 'a rolled back'),
            kdb.transaction().execute(async (trx) => {
              await insert(table, 'b', trx);
              await sleep(30);
              return 'b committed';
            }),
            raw(table, 'raw').then(() => 'raw done'),
          ]),
        );
        return { results };
      },
    });
    t.equal(await call('route'), 200);
    t.same((await texts(table)).sort(), ['b', 'raw']);
  },
);

check('a controlled transaction left open answers an error and commits nothing', {}, async (t) => {
  const table = await createTable(t);
  const call = await app(t, {
    async route() {
      await raw(table, 'request');
      const trx = await kdb.startTransaction().execute();
      await insert(table, 'controlled', trx);
      return { ok: true }; // never committed nor rolled back
    },
  });
  const status = await call('route');
  t.ok(status >= 500, `an error answer, got ${status}`);
  t.same(await texts(table), [], 'nothing committed');
});

check('a controlled transaction committed twice: the second is refused, the request commits', {}, async (t) => {
  const table = await createTable(t);
  let second = '';
  const call = await app(t, {
    async route() {
      const trx = await kdb.startTransaction().execute();
      await insert(table, 'controlled', trx);
      await trx.commit().execute();
      second = await limited(trx.commit().execute()).then(
        (r) => String(r),
        (err: Error) => err.constructor.name,
      );
      await raw(table, 'after');
      return {};
    },
  });
  t.equal(await call('route'), 200);
  t.not(second, 'hung');
  t.not(second, 'undefined', 'the second commit is refused');
  t.same(await texts(table), ['controlled', 'after']);
});

check(
  'a controlled transaction committed after its request ended is refused, and never reaches a later request',
  {},
  async (t) => {
    const table = await createTable(t, 'pid int');
    let kept: ControlledTransaction<Database> | undefined;
    const call = await app(t, {
      async first() {
        kept = await kdb.startTransaction().execute();
        await insert(table, 'first-controlled', kept);
        return {};
      },
      async second() {
        await raw(table, 'second');
        // Another request uses the first one's transaction object while it is open itself.
        const used = await limited(insert(table, 'from-second', kept)).then(
          (r) => (r === 'hung' ? 'hung' : 'ran'),
          (err: Error) => err.constructor.name,
        );
        return { used };
      },
    });
    const first = await call('first');
    t.ok(first >= 500, `the first request answered an error: ${first}`);
    const late = await limited((kept as ControlledTransaction<Database>).commit().execute()).then(
      (r) => (r === 'hung' ? 'hung' : 'committed'),
      (err: Error) => err.constructor.name,
    );
    t.not(late, 'hung');
    t.not(late, 'committed', `a late commit is refused (${late})`);
    t.equal(await call('second'), 200);
    t.same(await texts(table), ['second'], 'only the second request’s own write');
  },
);

/** A promise resolved from inside the transaction's callback, awaited by the request's code beside it. */
function signal(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

check(
  'the request’s code resumed by a promise the transaction’s callback resolved is not inside the transaction',
  {},
  async (t) => {
    const table = await createTable(t);
    const call = await app(t, {
      async route() {
        const inserted = signal();
        const tx = kdb
          .transaction()
          .execute(async (trx) => {
            await insert(table, 'inner-rolled-back', trx);
            inserted.resolve(); // e.g. a DataLoader batch or an event the request also waits for
            await sleep(100);
            throw new Error('inner fails');
          })
          .catch(() => 'inner rolled back');
        await inserted.promise;
        await raw(table, 'beside');
        return { tx: await tx };
      },
    });
    t.equal(await call('route'), 200);
    t.same(await texts(table), ['beside'], "the request's write survives the transaction's rollback");
  },
);

check(
  'a helper that begins a transaction and awaits its progress: the helper’s caller is not inside it',
  {},
  async (t) => {
    const table = await createTable(t);
    const call = await app(t, {
      async route() {
        const inserted = signal();
        async function startExport() {
          const tx = kdb
            .transaction()
            .execute(async (trx) => {
              await insert(table, 'inner-rolled-back', trx);
              inserted.resolve();
              await sleep(100);
              throw new Error('inner fails');
            })
            .catch(() => 'inner rolled back');
          await inserted.promise;
          return tx;
        }
        const tx = await startExport();
        await raw(table, 'beside');
        return { tx: await tx };
      },
    });
    t.equal(await call('route'), 200);
    t.same(await texts(table), ['beside'], "the request's write survives the transaction's rollback");
  },
);
