// A client that goes away mid-request: the plugin rolls back and releases at once, without
// waiting for the handler (even while it waits for a pool connection), over a real socket.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { SessionClosedError } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

t.test('an aborted request releases its connection within 1 s', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = Fastify();
  await app.register(contextDbPlugin, { db });

  let holding: () => void = () => {};
  const inTransaction = new Promise<void>((resolve) => {
    holding = resolve;
  });
  let letGo: () => void = () => {};
  const gate = new Promise<void>((resolve) => {
    letGo = resolve;
  });
  let afterAbort: unknown;
  const handlerDone = new Promise<void>((resolve) => {
    app.post('/hold', async (request) => {
      try {
        const session = await request.db.session();
        await session.query(`INSERT INTO ${table} (text) VALUES ('aborted')`);
        holding();
        await gate; // the client goes away while the transaction is open
        await session.query(`INSERT INTO ${table} (text) VALUES ('after-abort')`).catch((err: unknown) => {
          afterAbort = err;
        });
        return { ok: true };
      } finally {
        resolve();
      }
    });
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  t.teardown(() => app.close());

  const { port } = app.server.address() as AddressInfo;
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  await new Promise((resolve) => socket.once('connect', resolve));
  const body = JSON.stringify({ a: 1 });
  socket.write(
    `POST /hold HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
  );
  await inTransaction;
  t.equal(checkedOut(db), 1, 'the request holds a connection');
  t.equal((await activity(appName)).idleInTransaction, 1, 'with its transaction open');

  const abortedAt = Date.now();
  socket.destroy();
  t.ok(await eventually(() => checkedOut(db) === 0, 1000), 'released within 1 s of the abort');
  t.ok(
    await eventually(async () => (await activity(appName)).idleInTransaction === 0, 1000 - (Date.now() - abortedAt)),
    'no transaction left open on the server within the same second',
  );
  t.same(await texts(table), [], 'the insert was rolled back');

  letGo();
  await handlerDone;
  t.type(afterAbort, SessionClosedError, 'the handler cannot use the session after the abort');
  t.same(await texts(table), [], 'and nothing was written after it');
  t.equal(checkedOut(db), 0);
});

t.test('a client that goes away while waiting for the only pool connection leaves nothing behind', async (t) => {
  const { db, appName } = testDb(t, { max: 1, connectionTimeoutMillis: 3000 });
  const table = await createTable(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  let openGate: () => void = () => {};
  const gate = new Promise<void>((resolve) => {
    openGate = resolve;
  });
  let waiterOutcome: unknown = 'still running';
  app.post('/holder', async (request) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('holder')`);
    await gate;
    return { ok: true };
  });
  app.post('/waiter', async (request) => {
    try {
      // Waits for the pool while /holder has its only connection; the client leaves meanwhile.
      await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('waiter')`);
      await sleep(50);
      await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('waiter-2')`);
      waiterOutcome = 'done';
      return { ok: true };
    } catch (err) {
      waiterOutcome = err;
      throw err;
    }
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  const holder = fetch(`${url}/holder`, { method: 'POST' });
  t.ok(await eventually(() => checkedOut(db) === 1), '/holder has the only connection');
  const waiter = http.request(`${url}/waiter`, { method: 'POST' });
  waiter.on('error', () => {});
  waiter.end();
  await sleep(150);
  waiter.destroy();
  await sleep(100);
  openGate();
  t.equal((await holder).status, 200);
  t.ok(await eventually(() => waiterOutcome !== 'still running', 4000), 'the waiting handler finished');
  t.not(waiterOutcome, 'done', 'its queries failed once the client had gone');
  t.ok(await eventually(() => checkedOut(db) === 0, 4000), 'nothing checked out');
  t.equal((await activity(appName)).idleInTransaction, 0);
  t.same(await texts(table), ['holder'], 'nothing of the request whose client left');
});
