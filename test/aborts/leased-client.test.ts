// An abort (or an ordinary end) while the request uses `session.client()` directly, the way
// pg-cursor (and Kysely's or Drizzle's streaming on top of it) does: a portal read part-way and
// left open, which keeps itself node-postgres's active query until it is closed.
import { EventEmitter } from 'node:events';
import { DbSessionCtx, dbSession } from '@context-db/core';
import t from 'tap';
import { activity, admin, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

/** Backends of `appName` inside a transaction (an open portal shows as 'active', not 'idle in transaction'). */
async function inTransaction(appName: string): Promise<number> {
  const { rows } = await admin.query<{ n: string }>(
    'SELECT count(*)::text AS n FROM pg_stat_activity WHERE application_name = $1 AND xact_start IS NOT NULL',
    [appName],
  );
  return Number(rows[0]?.n ?? 0);
}

type Teardown = { teardown(fn: () => unknown): void };

interface Connection {
  parse(msg: { text: string }, more: boolean): void;
  bind(msg: { portal: string; values: unknown[] }, more: boolean): void;
  describe(msg: { type: 'P'; name: string }, more: boolean): void;
  execute(msg: { portal: string; rows: number }, more?: boolean): void;
  close(msg: { type: 'P'; name: string }, more?: boolean): void;
  flush(): void;
  sync(): void;
}

let portals = 0;

/**
 * What pg-cursor sends (Parse, Bind, Describe, Execute with a row limit, Flush; no Sync until it
 * is closed): the portal stays node-postgres's active query between reads.
 */
class Portal extends EventEmitter {
  readonly name = `review_portal_${++portals}`;
  readonly rows: unknown[] = [];
  #connection: Connection | undefined;
  constructor(readonly text: string) {
    super();
    this.on('error', () => {});
  }
  submit(connection: Connection): void {
    this.#connection = connection;
    connection.parse({ text: this.text }, true);
    connection.bind({ portal: this.name, values: [] }, true);
    connection.describe({ type: 'P', name: this.name }, true);
    connection.execute({ portal: this.name, rows: 1 }, true);
    connection.flush();
  }
  close(): void {
    this.#connection?.close({ type: 'P', name: this.name }, true);
    this.#connection?.sync();
  }
  handleRowDescription(): void {}
  handleDataRow(row: unknown): void {
    this.rows.push(row);
  }
  handlePortalSuspended(): void {
    this.emit('suspended');
  }
  handleCommandComplete(): void {}
  handleEmptyQuery(): void {}
  handleReadyForQuery(): void {
    this.emit('end');
  }
  handleError(err: Error): void {
    this.emit('error', err);
    this.emit('end');
  }
}

/** A request that wrote a row, then opened a cursor on session.client() and read one row of it. */
async function openCursor(t: Teardown) {
  const { db, appName } = testDb(t, { max: 2 });
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  const portal = new Portal('SELECT g FROM generate_series(1, 1000) AS g');
  await ctx.run(async () => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('aborted')`);
    const client = await session.client();
    const suspended = new Promise((resolve) => portal.once('suspended', resolve));
    client.query(portal as never);
    await suspended;
  });
  return { db, appName, table, ctx, portal };
}

t.test('an abort while a cursor from session.client() is open lets the connection go at once', async (t) => {
  const { db, appName, table, ctx, portal } = await openCursor(t);
  t.equal(portal.rows.length, 1, 'the cursor read its first row and is left open');
  let aborted = false;
  void ctx.abort(new Error('client gone')).then(() => {
    aborted = true;
  });
  t.ok(await eventually(() => aborted, 1500), 'abort() resolves within 1.5 s');
  t.ok(await eventually(() => checkedOut(db) === 0, 1500), 'the connection is released');
  t.equal(await inTransaction(appName), 0, 'no backend is left inside the transaction');
  t.same(await texts(table), [], 'nothing committed');
  // Let a stuck connection go, so the teardown's db.close() can end.
  portal.close();
});

t.test('the same cursor, closed by the request code after the abort: everything is released', async (t) => {
  const { db, appName, table, ctx, portal } = await openCursor(t);
  const aborted = ctx.abort(new Error('client gone'));
  portal.close();
  await aborted;
  t.ok(await eventually(() => checkedOut(db) === 0), 'the connection is released');
  t.equal((await activity(appName)).idleInTransaction, 0);
  t.same(await texts(table), [], 'nothing committed');
});

t.test('an abort while a raw client query runs: cancelled, rolled back, released', async (t) => {
  const { db, appName } = testDb(t, { max: 2 });
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  let running!: Promise<unknown>;
  await ctx.run(async () => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('aborted')`);
    const client = await session.client();
    running = client.query('SELECT pg_sleep(3)');
    running.catch(() => {});
  });
  await new Promise((resolve) => setTimeout(resolve, 100));
  const started = performance.now();
  const reason = new Error('client gone');
  await ctx.abort(reason);
  t.ok(performance.now() - started < 1000, 'abort() resolves well before the 3 s statement would end');
  await t.rejects(running, reason, 'the raw query is cancelled and says why, as session.query does');
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
  t.same(await texts(table), []);
});

for (const statusCode of [200, 500]) {
  // At an ordinary end too (no abort), the COMMIT or ROLLBACK would queue behind the open portal.
  t.test(
    `a cursor from session.client() left open at an ordinary end (status ${statusCode}): the connection is let go`,
    async (t) => {
      const { db, appName, table, ctx, portal } = await openCursor(t);
      t.teardown(() => portal.close());
      let outcome = 'pending' as 'pending' | 'resolved' | 'rejected';
      ctx.finish({ statusCode }).then(
        () => {
          outcome = 'resolved';
        },
        () => {
          outcome = 'rejected';
        },
      );
      t.ok(await eventually(() => outcome !== 'pending', 3000), `finish() settles (${outcome})`);
      t.equal(outcome, statusCode === 200 ? 'rejected' : 'resolved', 'a commit fails: it could not be sent');
      t.ok(await eventually(() => checkedOut(db) === 0, 1500), 'the connection is released');
      t.same(await texts(table), [], 'nothing committed');
      t.equal(await inTransaction(appName), 0, 'no backend is left inside the transaction');
    },
  );
}
