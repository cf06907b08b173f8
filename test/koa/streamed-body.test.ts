// Issue 10 item 2: a streamed body decides the outcome by what it does before its first byte. The
// commit waits for the stream's first chunk; a stream that fails first rolls back and answers 500.
// After the first byte the status is on the wire: a later failure is logged, the commit stands.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { Readable } from 'node:stream';
import { type DbConnect, dbSession } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Koa from 'koa';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { collectErrors, request, serve } from '../fixtures/koa.js';

async function insert(db: DbConnect, table: string, text: string): Promise<void> {
  await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
}

t.test('a stream that fails before its first byte rolls back and answers 500', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const errors = collectErrors(app);
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await insert(db, table, ctx.path);
    ctx.set('x-handler', 'ran');
    if (ctx.path === '/missing-file') {
      ctx.body = fs.createReadStream(path.join(import.meta.dirname, 'no-such-file.txt'));
    } else {
      ctx.body = Readable.from(
        (async function* () {
          await new Promise((resolve) => setTimeout(resolve, 5));
          throw new Error('the generator failed before its first yield');
        })(),
      );
    }
  });
  const url = await serve(t, app);

  for (const route of ['/missing-file', '/failing-generator']) {
    const res = await fetch(`${url}${route}`, { method: 'POST' });
    t.equal(res.status, 500, `${route}: an error response, not a reset connection`);
    t.equal(await res.text(), 'Internal Server Error', `${route}: nothing of the stream error is shown`);
    t.equal(res.headers.get('x-handler'), null, `${route}: the handler's headers are dropped`);
  }
  t.same(await texts(table), [], 'neither request committed its row');
  t.same(
    errors.map((err) => (err as NodeJS.ErrnoException).code ?? err.message),
    ['ENOENT', 'the generator failed before its first yield'],
    'app.on("error") gets the stream errors to log',
  );
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a stream that fails after its first byte keeps the commit; the failure is logged', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const errors = collectErrors(app);
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await insert(db, table, 'streamed');
    ctx.body = Readable.from(
      (async function* () {
        yield 'first chunk\n';
        await new Promise((resolve) => setTimeout(resolve, 20));
        throw new Error('failed mid-stream');
      })(),
    );
  });
  const url = await serve(t, app);

  // The status line and the first chunk arrive; then the connection is cut (chunked encoding never
  // terminated), which the client sees as an aborted response.
  const outcome = await new Promise<{ status: number; body: string; aborted: boolean }>((resolve, reject) => {
    const req = http.request(url, { method: 'POST', agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, aborted: false }));
      res.on('error', () => resolve({ status: res.statusCode ?? 0, body, aborted: true }));
    });
    req.on('error', reject);
    req.end();
  });
  t.same(outcome, { status: 200, body: 'first chunk\n', aborted: true }, 'the client saw 200, then a cut');
  t.same(await texts(table), ['streamed'], 'committed: the 200 was already on the wire');
  // Koa reports it twice (its pipeline callback and its on-finished listener both call ctx.onerror).
  t.ok(errors.length > 0, 'the failure reached app.on("error")');
  t.ok(
    errors.every((err) => err.message === 'failed mid-stream'),
    'and nothing else did',
  );
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a streamed body is sent after the commit; only its first chunk is produced before it', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  // The second chunk reports what the database and the pool look like when Koa pipes the stream.
  const report = () =>
    Readable.from(
      (async function* () {
        yield '';
        // Read synchronously at the second pull: a commit still in flight would hold its connection.
        const held = checkedOut(db);
        const { idleInTransaction } = await activity(appName);
        yield JSON.stringify({ rows: await texts(table), checkedOut: held, idleInTransaction });
      })(),
    );
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await insert(db, table, ctx.path);
    if (ctx.path === '/fail') ctx.status = 500;
    ctx.body = report();
  });
  const url = await serve(t, app);

  const ok = await request(`${url}/ok`);
  t.equal(ok.status, 200);
  t.same(JSON.parse(ok.body), { rows: ['/ok'], checkedOut: 0, idleInTransaction: 0 }, 'committed and released');

  const failed = await request(`${url}/fail`);
  t.equal(failed.status, 500);
  t.same(JSON.parse(failed.body), { rows: ['/ok'], checkedOut: 0, idleInTransaction: 0 }, 'rolled back and released');
  t.same(await texts(table), ['/ok']);
});

t.test('HEAD and 204 never read the stream, so they do not wait for it', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  collectErrors(app);
  let pulled = 0;
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await insert(db, table, `${ctx.method} ${ctx.path}`);
    // A stream that would never produce: waiting for it would hang the request.
    ctx.body = new Readable({
      read() {
        pulled++;
      },
    });
    if (ctx.path === '/no-content') ctx.status = 204;
  });
  const url = await serve(t, app);
  t.equal((await request(`${url}/head`, { method: 'HEAD' })).status, 200);
  t.equal((await request(`${url}/no-content`, { method: 'POST' })).status, 204);
  t.same(await texts(table), ['HEAD /head', 'POST /no-content'], 'both committed');
  t.equal(pulled, 0, 'the stream was never read');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a client that leaves while the stream has produced nothing: rolled back and released', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const errors = collectErrors(app);
  let stream: Readable | undefined;
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await insert(db, table, 'waiting');
    stream = new Readable({ read() {} }); // a long poll that never produces
    ctx.body = stream;
  });
  const url = await serve(t, app);
  const req = http.request(url, { method: 'POST', agent: false });
  req.on('error', () => {});
  req.end();
  t.ok(await eventually(async () => (await activity(appName)).idleInTransaction === 1), 'the commit waits');
  req.destroy();
  t.ok(
    await eventually(async () => checkedOut(db) === 0 && (await activity(appName)).idleInTransaction === 0),
    'released once the client left',
  );
  t.ok(stream?.destroyed, 'the stream was destroyed');
  t.same(await texts(table), []);
  t.same(errors, [], 'nothing to report: nobody is left to answer');
});

t.test('a web stream (ReadableStream, Response) that fails before its first byte rolls back, 500', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const errors = collectErrors(app);
  const failing = () =>
    new ReadableStream({
      async pull() {
        await new Promise((resolve) => setTimeout(resolve, 5));
        throw new Error('the web stream failed before its first chunk');
      },
    });
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await insert(db, table, ctx.path);
    ctx.body = ctx.path === '/response' ? new Response(failing()) : failing();
  });
  const url = await serve(t, app);

  for (const route of ['/readable-stream', '/response']) {
    t.same(await request(`${url}${route}`), { status: 500, body: 'Internal Server Error' }, route);
  }
  t.same(await texts(table), [], 'neither request committed its row');
  t.ok(
    errors.length > 0 && errors.every((err) => err.message === 'the web stream failed before its first chunk'),
    'app.on("error") gets the stream errors, and nothing else',
  );
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a web stream is sent whole after the commit, with the Content-Length it was given', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const chunks = ['first ', 'second'];
  const web = () =>
    new ReadableStream({
      pull(controller) {
        const chunk = chunks.shift();
        if (chunk === undefined) controller.close();
        else controller.enqueue(new TextEncoder().encode(chunk));
      },
    });
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await insert(db, table, ctx.path);
    chunks.splice(0, chunks.length, 'first ', 'second');
    if (ctx.path === '/response') {
      ctx.body = new Response(web(), { status: 201, headers: { 'content-length': '12', 'x-from': 'response' } });
    } else {
      ctx.body = web();
      ctx.length = 12;
    }
  });
  const url = await serve(t, app);

  const plain = await fetch(`${url}/readable-stream`, { method: 'POST' });
  t.same([plain.status, plain.headers.get('content-length'), await plain.text()], [200, '12', 'first second']);
  const response = await fetch(`${url}/response`, { method: 'POST' });
  t.same(
    [response.status, response.headers.get('content-length'), response.headers.get('x-from'), await response.text()],
    [201, '12', 'response', 'first second'],
  );
  t.same(await texts(table), ['/readable-stream', '/response'], 'both committed');
});

t.test('a client that leaves while a web stream has produced nothing: rolled back, stream cancelled', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const errors = collectErrors(app);
  let cancelled = false;
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await insert(db, table, 'waiting');
    // A long poll that never produces.
    ctx.body = new ReadableStream({
      cancel() {
        cancelled = true;
      },
    });
  });
  const url = await serve(t, app);
  const req = http.request(url, { method: 'POST', agent: false });
  req.on('error', () => {});
  req.end();
  t.ok(await eventually(async () => (await activity(appName)).idleInTransaction === 1), 'the commit waits');
  req.destroy();
  t.ok(
    await eventually(async () => checkedOut(db) === 0 && (await activity(appName)).idleInTransaction === 0),
    'released once the client left',
  );
  t.ok(await eventually(() => cancelled), 'the web stream was cancelled');
  t.same(await texts(table), []);
  t.same(errors, [], 'nothing to report: nobody is left to answer');
});
