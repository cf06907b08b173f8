// The example apps as a user runs them: a real process started the way `pnpm example` starts it,
// answering over loopback, writing to the database.
import { spawn } from 'node:child_process';
import t from 'tap';
import { freePort } from '../../scripts/database.js';
import { admin, eventually, uniqueName } from '../fixtures/db.js';

for (const framework of ['fastify', 'express', 'koa']) {
  t.test(`the ${framework} example answers and writes to the database`, async (t) => {
    const port = await freePort();
    const table = uniqueName('example');
    t.teardown(() => admin.query(`DROP TABLE IF EXISTS ${table}`));
    const child = spawn(process.execPath, ['--import=tsx', `examples/${framework}/src/server.ts`], {
      env: { ...process.env, PORT: String(port), EXAMPLE_TABLE: table },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    t.teardown(() => void child.kill());
    const base = `http://127.0.0.1:${port}`;
    const up = await eventually(
      async () => (await fetch(`${base}/health`).catch(() => undefined))?.ok === true,
      20_000,
    );
    t.ok(up, `the server came up\n${output}`);
    t.equal((await fetch(`${base}/simple`, { method: 'POST' })).status, 200);
    t.equal((await fetch(`${base}/rollback-by-status`, { method: 'POST' })).status, 422);
    t.equal((await fetch(`${base}/rollback-by-exception`, { method: 'POST' })).status, 500);
    const rows = await (await fetch(`${base}/rows`)).json();
    t.same(rows, ['simple'], 'only the successful request was committed');
  });
}
