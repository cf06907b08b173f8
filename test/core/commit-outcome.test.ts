// What a context's end reports agrees with what the databases hold: several databases are
// checked for deferred constraints before the first COMMIT, a COMMIT whose acknowledgement was
// lost is reported as unknown (not as rolled back), and a throwing user callback rolls back.
import net from 'node:net';
import { DbConnect, DbSessionCtx, dbSession } from '@context-db/core';
import t from 'tap';
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

t.test('two databases: a deferred violation in the second rolls back the first too', async (t) => {
  const first = testDb(t);
  const second = testDb(t);
  const table = await createTable(t);
  const deferred = await createDeferredTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await (await dbSession(first.db)).query(`INSERT INTO ${table} (text) VALUES ('first database')`);
    await (await dbSession(second.db)).query(`INSERT INTO ${deferred} (key) VALUES ('dup'), ('dup')`);
  });
  await t.rejects(ctx.finish({ statusCode: 200 }), { code: 'COMMIT_FAILED' });
  t.same(await texts(table), [], "the first database's writes were rolled back, not committed");
  t.equal(checkedOut(first.db) + checkedOut(second.db), 0);
  t.equal((await activity(first.appName)).idleInTransaction + (await activity(second.appName)).idleInTransaction, 0);
});

/**
 * A TCP proxy to PostgreSQL that, once armed, cuts both connections when the server's answer to
 * a COMMIT passes through: the server has committed, the client never hears it.
 */
async function commitAckDropper(t: { teardown(fn: () => unknown): void }) {
  const target = new URL(DATABASE_URL);
  const sockets = new Set<net.Socket>();
  let armed = false;
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 5432), target.hostname);
    sockets.add(client).add(upstream);
    client.on('error', () => {}).on('close', () => upstream.destroy());
    upstream.on('error', () => {}).on('close', () => client.destroy());
    client.pipe(upstream);
    upstream.on('data', (chunk: Buffer) => {
      if (armed && chunk.includes('COMMIT\0')) {
        upstream.destroy();
        client.destroy();
      } else client.write(chunk);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const socket of sockets) socket.destroy();
    server.close();
  });
  const url = new URL(DATABASE_URL);
  url.host = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  return { url: url.toString(), arm: () => (armed = true) };
}

t.test('a COMMIT whose acknowledgement is lost is reported as of unknown outcome, not as rolled back', async (t) => {
  const table = await createTable(t);
  const proxy = await commitAckDropper(t);
  const appName = uniqueName('cdb_ack');
  const db = new DbConnect({
    connectionString: proxy.url,
    poolConfig: { application_name: appName },
    onPoolError: () => {},
  });
  t.teardown(() => db.close());
  const ctx = new DbSessionCtx();
  await ctx.run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('maybe')`));
  proxy.arm();
  const err = await ctx.finish({ statusCode: 200 }).catch((e: unknown) => e);
  t.match(err, { code: 'COMMIT_OUTCOME_UNKNOWN', message: /may or may not have been committed/ });
  t.notMatch((err as Error).message, /rolled back/, 'it does not claim a rollback');
  t.same(await texts(table), ['maybe'], 'and indeed the server had committed');
  t.equal(checkedOut(db), 0, 'the dead connection was let go');
});

t.test('a commitOn that throws rolls back, releases, and is reported as the failure', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('x')`));
  const boom = new Error('commitOn failed');
  await t.rejects(
    ctx.finish({
      statusCode: 200,
      commitOn: () => {
        throw boom;
      },
    }),
    boom,
  );
  t.same(await texts(table), []);
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});
