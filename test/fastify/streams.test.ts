// A streamed body decides the outcome by what the stream does before its first byte: a stream
// that fails first rolls back and answers the error; one that produces data commits before that
// data is written. After the first byte the status is on the wire: a later stream error can only
// be logged (Fastify does), and the commit stands. Web streams and Response bodies are held the
// same way.
import { createReadStream } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DbConnect } from '@context-db/core';
import t, { type Test } from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { crashes, logCapture, probeApp } from '../fixtures/fastify.js';

/** A probe app whose GET /stream inserts `text` and then sends the body `makeBody()` returns. */
async function streamApp(t: Test, db: DbConnect, table: string, makeBody: () => Readable | ReadableStream | Response) {
  const { logger, lines } = logCapture();
  const app = await probeApp(t, db, table, {}, { logger });
  app.get<{ Querystring: { text: string } }>('/stream', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ($1)`, [request.query.text]);
    return reply.type('text/plain').send(makeBody());
  });
  return { app, lines };
}

async function nothingHeld(t: Test, db: DbConnect, appName: string): Promise<void> {
  t.ok(await eventually(() => checkedOut(db) === 0), 'no connection checked out');
  t.equal((await activity(appName)).idleInTransaction, 0, 'nothing idle in transaction');
}

t.test('a file stream that fails before its first byte (a missing file) rolls back', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const { app } = await streamApp(t, db, table, () => createReadStream(`/nonexistent/${table}.txt`));
  const res = await app.inject({ method: 'GET', url: '/stream?text=missing-file' });
  t.equal(res.statusCode, 500, res.body);
  t.match(res.json(), { code: 'ENOENT' }, "the response is the stream's error");
  t.same(await texts(table), [], 'the row is rolled back');
  await nothingHeld(t, db, appName);
});

t.test('a generator stream that throws before its first yield rolls back', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const { app } = await streamApp(t, db, table, () =>
    Readable.from(
      (async function* () {
        await sleep(10);
        throw new Error('the export failed before any row');
        // biome-ignore lint/correctness/noUnreachable: a generator that never yields
        yield 'never';
      })(),
    ),
  );
  const res = await app.inject({ method: 'GET', url: '/stream?text=failed-generator' });
  t.equal(res.statusCode, 500);
  t.equal(res.json().message, 'the export failed before any row');
  t.same(await texts(table), [], 'the row is rolled back');
  await nothingHeld(t, db, appName);
});

t.test('a stream that produces its first chunk commits, and sends all of it', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const { app } = await streamApp(t, db, table, () =>
    Readable.from(
      (async function* () {
        await sleep(10);
        yield 'chunk-1,';
        yield 'chunk-2';
      })(),
    ),
  );
  const res = await app.inject({ method: 'GET', url: '/stream?text=streamed' });
  t.equal(res.statusCode, 200);
  t.equal(res.body, 'chunk-1,chunk-2');
  t.same(await texts(table), ['streamed']);
  await nothingHeld(t, db, appName);
});

t.test('an empty stream commits', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const { app } = await streamApp(t, db, table, () => Readable.from([]));
  const res = await app.inject({ method: 'GET', url: '/stream?text=empty' });
  t.equal(res.statusCode, 200);
  t.equal(res.body, '');
  t.same(await texts(table), ['empty']);
  await nothingHeld(t, db, appName);
});

t.test('a stream error after the first byte keeps the commit and is logged', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const { app, lines } = await streamApp(t, db, table, () =>
    Readable.from(
      (async function* () {
        yield 'chunk-1,';
        await sleep(10);
        throw new Error('the export failed half-way');
      })(),
    ),
  );
  // The head (200) went out with the first chunk: the client sees a cut response, not a status.
  const res = await app.inject({ method: 'GET', url: '/stream?text=half-streamed' }).catch(() => undefined);
  if (res !== undefined) t.equal(res.statusCode, 200, 'the status that went out with the first byte');
  t.same(await texts(table), ['half-streamed'], 'committed before the first byte, as the 200 said');
  t.ok(
    await eventually(() => lines.some((line) => line.err?.message === 'the export failed half-way')),
    "Fastify logged the stream's error",
  );
  await nothingHeld(t, db, appName);
});

t.test('a client that goes away while a stream has not produced its first chunk rolls back at once', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  let destroyed = false;
  const { app } = await streamApp(
    t,
    db,
    table,
    () =>
      new Readable({
        read() {}, // a stream that never produces (an idle event stream)
        destroy(err, callback) {
          destroyed = true;
          callback(err);
        },
      }),
  );
  await app.listen({ port: 0, host: '127.0.0.1' });
  const { port } = app.server.address() as AddressInfo;
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write('GET /stream?text=never-streamed HTTP/1.1\r\nhost: localhost\r\n\r\n');
  t.ok(
    await eventually(async () => (await activity(appName)).idleInTransaction === 1),
    'the transaction is held while the stream has produced nothing',
  );
  socket.destroy();
  t.ok(await eventually(() => checkedOut(db) === 0, 1000), 'released within 1 s of the abort');
  t.ok(await eventually(() => destroyed), 'the held stream is destroyed');
  t.same(await texts(table), [], 'rolled back');
  await nothingHeld(t, db, appName);
});

t.test('a throw after reply.send(stream), before its first chunk, rolls back and answers the error', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table);
  app.get('/export', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('exported')`);
    reply.type('text/plain').send(
      Readable.from(
        (async function* () {
          await sleep(50); // the first row takes a moment
          yield 'row 1\n';
        })(),
      ),
    );
    await sleep(5);
    throw new Error('the audit step after starting the export failed');
  });
  const res = await app.inject({ method: 'GET', url: '/export' });
  t.equal(res.statusCode, 500, 'the error that rolled back is the response, not the held 200');
  t.equal(res.json().message, 'the audit step after starting the export failed');
  t.same(await texts(table), [], 'rolled back');
  await nothingHeld(t, db, appName);
});

t.test('a commitOn that throws with a stream body answers 500, rolls back, and does not crash', async (t) => {
  const seen = crashes(t);
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table, {
    commitOn: () => {
      throw new Error('commitOn failed');
    },
  });
  app.get('/stream', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('streamed')`);
    return reply.send(Readable.from(['a', 'b']));
  });
  const res = await app.inject({ method: 'GET', url: '/stream' });
  t.equal(res.statusCode, 500);
  t.same(await texts(table), []);
  await nothingHeld(t, db, appName);
  t.same(seen, [], 'no unhandled rejection or uncaught exception');
});

t.test('HEAD on a GET route whose stream fails before its first chunk rolls back', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const { app } = await streamApp(t, db, table, () =>
    Readable.from(
      (async function* () {
        await sleep(10);
        throw new Error('the export failed before any row');
        // biome-ignore lint/correctness/noUnreachable: a generator that never yields
        yield 'never';
      })(),
    ),
  );
  const res = await app.inject({ method: 'HEAD', url: '/stream?text=head' });
  t.equal(res.statusCode, 500);
  t.same(await texts(table), [], 'rolled back');
  await nothingHeld(t, db, appName);
});

/** A web stream that waits, then yields `chunks` or fails with `error`. */
function webStream(chunks: string[], error?: Error): ReadableStream<Uint8Array> {
  return new ReadableStream({
    async pull(controller) {
      await sleep(10);
      if (error !== undefined) return controller.error(error);
      for (const chunk of chunks) controller.enqueue(new TextEncoder().encode(chunk));
      controller.close();
    },
  });
}

t.test('a web stream that fails before its first chunk rolls back and answers its error', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const { app } = await streamApp(t, db, table, () => webStream([], new Error('the web export failed')));
  const res = await app.inject({ method: 'GET', url: '/stream?text=failed-web-stream' });
  t.equal(res.statusCode, 500);
  t.equal(res.json().message, 'the web export failed');
  t.same(await texts(table), [], 'rolled back');
  await nothingHeld(t, db, appName);
});

t.test('a web stream that produces commits before its first chunk and sends all of it', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const { app } = await streamApp(t, db, table, () => webStream(['chunk-1,', 'chunk-2']));
  const res = await app.inject({ method: 'GET', url: '/stream?text=web-streamed' });
  t.equal(res.statusCode, 200);
  t.equal(res.body, 'chunk-1,chunk-2');
  t.same(await texts(table), ['web-streamed']);
  await nothingHeld(t, db, appName);
});

t.test("a Response body decides by the Response's status and holds its stream", async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const responses: Record<string, () => Response> = {
    created: () => new Response(webStream(['made']), { status: 201, headers: { 'x-made': 'yes' } }),
    missing: () => new Response('nothing here', { status: 404 }),
    failing: () => new Response(webStream([], new Error('the body failed')), { status: 200 }),
  };
  const app = await probeApp(t, db, table);
  app.get<{ Querystring: { text: string } }>('/response', async (request) => {
    const { text } = request.query;
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
    return responses[text]?.();
  });
  const created = await app.inject({ method: 'GET', url: '/response?text=created' });
  t.equal(created.statusCode, 201);
  t.equal(created.headers['x-made'], 'yes', "the Response's headers go out");
  t.equal(created.body, 'made');
  const missing = await app.inject({ method: 'GET', url: '/response?text=missing' });
  t.equal(missing.statusCode, 404);
  t.equal(missing.body, 'nothing here');
  const failing = await app.inject({ method: 'GET', url: '/response?text=failing' });
  t.equal(failing.statusCode, 500);
  t.equal(failing.json().message, 'the body failed');
  t.same(await texts(table), ['created'], 'the 404 and the body that failed first rolled back');
  await nothingHeld(t, db, appName);
});

t.test('a web stream that cannot be read (locked) rolls back and answers 500', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const { app } = await streamApp(t, db, table, () => {
    const body = webStream(['never read']);
    body.getReader(); // someone else holds it
    return body;
  });
  const res = await app.inject({ method: 'GET', url: '/stream?text=locked' });
  t.equal(res.statusCode, 500);
  t.same(await texts(table), [], 'rolled back');
  await nothingHeld(t, db, appName);
});
