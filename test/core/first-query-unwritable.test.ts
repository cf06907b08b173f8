// BEGIN and the session's first query are handed to node-postgres together (one flight), and the
// session waits for BEGIN's answer before the query's. A first query that node-postgres fails
// while writing it (a parameter it cannot serialise, such as a BigInt inside a JSON value, whose JSON.stringify
// throws in pg's prepareValue; or values that are not an array) rejects at once, a round trip
// before BEGIN is answered: it was an unhandled rejection, which ends a Node process by default.
// It must be an ordinary 500, as the same query later in the transaction is.
//
// The app runs in a child process (a real Fastify server over loopback), so that the crash is
// observed rather than suffered by the test runner.
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { activity, DATABASE_URL, uniqueName } from '../fixtures/db.js';

const root = join(import.meta.dirname, '../..');

const app = (appName: string) => `
import { DbConnect, dbSession } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
const db = new DbConnect({ connectionString: process.env.DATABASE_URL, poolConfig: { max: 2, application_name: ${JSON.stringify(appName)} } });
const app = Fastify();
await app.register(contextDbPlugin, { db });
// A BigInt inside a JSON value: pg's prepareValue JSON.stringify()s it and throws.
app.get('/bigint-first', async () => {
  await (await dbSession(db)).query('SELECT $1::jsonb AS v', [{ n: 1n }]);
  return { ok: true };
});
app.get('/bigint-later', async () => {
  const session = await dbSession(db);
  await session.query('SELECT 1');
  await session.query('SELECT $1::jsonb AS v', [{ n: 1n }]);
  return { ok: true };
});
app.get('/values-not-array-first', async () => {
  await (await dbSession(db)).query('SELECT $1::text AS v', 'x' as unknown as unknown[]);
  return { ok: true };
});
app.get('/health', async () => ({ ok: true }));
const url = await app.listen({ host: '127.0.0.1', port: 0 });
console.log('LISTENING ' + url);
`;

async function startApp(t: Test) {
  await mkdir(join(root, '.tmp'), { recursive: true });
  const dir = await mkdtemp(join(root, '.tmp', 'review-first-value-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const appName = uniqueName('cdb_fv');
  await writeFile(join(dir, 'app.ts'), app(appName));
  const child = spawn(process.execPath, ['--import', 'tsx', join(dir, 'app.ts')], {
    cwd: root,
    env: { ...process.env, DATABASE_URL },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stderr.on('data', (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk;
      const match = /LISTENING (\S+)/.exec(output);
      if (match?.[1] !== undefined) resolve(match[1]);
    });
    child.once('exit', () => reject(new Error(`the app exited before listening:\n${output}`)));
  });
  let alive = true;
  void exited.then(() => (alive = false));
  const status = (path: string) =>
    fetch(`${url}${path}`).then(
      (res) => res.status,
      () => 'no answer' as const,
    );
  return { url, appName, status, alive: () => alive, output: () => output, exited };
}

t.test('a failing parameter later in the transaction: an ordinary 500 (control)', async (t) => {
  const app = await startApp(t);
  t.equal(await app.status('/bigint-later'), 500, 'the request answers 500');
  t.equal(await app.status('/health'), 200, 'the server still answers');
});

for (const path of ['/bigint-first', '/values-not-array-first']) {
  t.test(`${path}: a first query node-postgres cannot write answers 500 and the server lives on`, async (t) => {
    const app = await startApp(t);
    const status = await app.status(path);
    // Give a crash the time to happen.
    await new Promise((resolve) => setTimeout(resolve, 300));
    t.equal(status, 500, 'the request answers 500');
    t.ok(app.alive(), 'the server process is still running');
    if (!app.alive()) t.comment(app.output().split('\n').slice(0, 6).join('\n'));
    t.equal((await activity(app.appName)).idleInTransaction, 0, 'no transaction left open');
  });
}
