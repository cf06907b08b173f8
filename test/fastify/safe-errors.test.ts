// The error bodies a client gets for the library's failures carry no database internals
// (constraint names, hosts, ports, pool sizes); the details are in the log, on the error.
import { DbConnect } from '@context-db/core';
import t from 'tap';
import { admin, checkedOut, createTable, eventually, testDb, uniqueName } from '../fixtures/db.js';
import { logCapture, probeApp } from '../fixtures/fastify.js';

process.env.NODE_ENV = 'production';

/** Every log line as one string: what an operator would search for the details. */
function logged(lines: readonly unknown[]): string {
  return lines.map((line) => JSON.stringify(line)).join('\n');
}

t.test('a failed COMMIT answers 500 without the constraint, table or key; the log has them', async (t) => {
  const { db } = testDb(t);
  const constraint = uniqueName('secret_constraint');
  const table = await createTable(t, `key text, CONSTRAINT ${constraint} UNIQUE (key) DEFERRABLE INITIALLY DEFERRED`);
  await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'secret-key-value')`);
  const { logger, lines } = logCapture();
  const app = await probeApp(t, db, table, {}, { logger });
  const res = await app.inject({ method: 'POST', url: '/write', payload: { text: 'dup', key: 'secret-key-value' } });
  t.equal(res.statusCode, 500);
  t.equal(res.json().code, 'COMMIT_FAILED');
  for (const secret of [constraint, table, 'secret-key-value', '23505']) {
    t.notOk(res.body.includes(secret), `the body does not show ${secret}`);
  }
  t.ok(await eventually(() => logged(lines).includes(constraint)), 'the log names the constraint');
  t.equal(checkedOut(db), 0);
});

t.test('a full pool answers 503 without its size or timeout; the log has them', async (t) => {
  const { db } = testDb(t, { max: 3, connectionTimeoutMillis: 137 });
  const table = await createTable(t);
  const { logger, lines } = logCapture();
  const app = await probeApp(t, db, table, {}, { logger });
  // Three requests hold the three connections while a fourth asks for one.
  const holding = Array.from({ length: 3 }, (_, i) =>
    app.inject({ method: 'POST', url: '/write', payload: { text: `holder-${i}`, delayMs: 600 } }),
  );
  t.ok(await eventually(() => checkedOut(db) === 3), 'the pool is full');
  const res = await app.inject({ method: 'POST', url: '/write', payload: { text: 'starved' } });
  t.equal(res.statusCode, 503, res.body);
  t.notMatch(res.body, /137|\b3\b|max|connectionTimeoutMillis/, 'the body shows neither the pool size nor the timeout');
  t.ok(await eventually(() => /137/.test(logged(lines))), 'the log has the timeout');
  for (const held of await Promise.all(holding)) t.equal(held.statusCode, 200);
});

t.test('an unreachable database answers 503 without its host or port; the log has them', async (t) => {
  const db = new DbConnect({ connectionString: 'postgres://postgres@127.0.0.1:1/x' });
  t.teardown(() => db.close());
  const table = uniqueName('never_created');
  const { logger, lines } = logCapture();
  const app = await probeApp(t, db, table, {}, { logger });
  const res = await app.inject({ method: 'POST', url: '/write', payload: { text: 'unreachable' } });
  t.equal(res.statusCode, 503, res.body);
  t.notMatch(res.body, /127\.0\.0\.1|:1\b|ECONNREFUSED|postgres:\/\//, 'the body shows neither host nor port');
  t.ok(await eventually(() => logged(lines).includes('127.0.0.1')), 'the log has the address');
});
