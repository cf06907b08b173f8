// Transaction control (issue #12), from its review; every failure described here failed before its fix: "a hook that throws is logged through the framework's logger". Koa's
// adapter reports it with app.emit('error', err, ctx); Koa's default handler (app.onerror)
// throws a TypeError for a non-Error value and returns silently for an error with `expose` or a
// 404 `status` (what HTTP-client errors such as axios's carry when the upstream answered 404).
// The adapter's hook runner swallows what the reporter throws, so these hook failures vanish
// without a trace in a Koa app with the default error handling.
import { dbSession, onCommit } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Koa from 'koa';
import t from 'tap';
import { createTable, testDb, texts } from '../fixtures/db.js';
import { request, serve } from '../fixtures/koa.js';

function captureConsoleError(t: { teardown(fn: () => unknown): void }): string[] {
  const lines: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => {
    lines.push(args.map((a) => (a instanceof Error ? (a.stack ?? a.message) : String(a))).join(' '));
  };
  t.teardown(() => {
    console.error = original;
  });
  return lines;
}

const failures: Record<string, () => unknown> = {
  'a thrown string': () => {
    throw 'upstream unavailable';
  },
  'a rejected plain object': () => Promise.reject({ code: 'EUPSTREAM', message: 'upstream unavailable' }),
  'an error carrying status 404 (an HTTP client error)': () => {
    throw Object.assign(new Error('webhook endpoint answered 404'), { status: 404 });
  },
  'an error with expose: true': () => {
    throw Object.assign(new Error('webhook rejected the event'), { expose: true, status: 400 });
  },
};

for (const [name, hook] of Object.entries(failures)) {
  t.test(`Koa with default error handling: a hook failing with ${name} is logged somewhere`, async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const app = new Koa();
    app.use(contextDb({ db }));
    app.use(async (ctx) => {
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('order')`);
      await onCommit(db, hook);
      ctx.body = 'ok';
    });
    const url = await serve(t, app);
    const logged = captureConsoleError(t);
    const res = await request(url, { method: 'POST' });
    t.equal(res.status, 200, 'the committed request stays a 2xx');
    t.same(await texts(table), ['order']);
    t.ok(logged.length > 0, "the hook's failure reached a log");
  });
}
