// The example servers as a deploy stops them: SIGTERM while requests are in flight. Each request
// that got a 200 has its row, the others wrote nothing, and the process closes its database and
// exits by itself.
import { spawn } from 'node:child_process';
import http from 'node:http';
import t from 'tap';
import { freePort } from '../../scripts/database.js';
import { admin, eventually, uniqueName } from '../fixtures/db.js';

function post(url: string, agent: http.Agent): Promise<number | 'refused'> {
  return new Promise((resolve) => {
    const request = http.request(url, { method: 'POST', agent }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', () => resolve('refused'));
    });
    request.on('error', () => resolve('refused'));
    request.end();
  });
}

for (const framework of ['fastify', 'express', 'koa']) {
  t.test(`the ${framework} example drains and closes on SIGTERM`, async (t) => {
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
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    t.teardown(() => void child.kill('SIGKILL'));
    const base = `http://127.0.0.1:${port}`;
    const up = await eventually(
      async () => (await fetch(`${base}/health`).catch(() => undefined))?.ok === true,
      20_000,
    );
    t.ok(up, 'the server came up');
    if (!up) t.comment(output);
    // Keep-alive connections, as a browser or a proxy holds them: they must not keep the server open.
    const agent = new http.Agent({ keepAlive: true });
    t.teardown(() => agent.destroy());
    const requests = Array.from({ length: 100 }, () => post(`${base}/simple`, agent));
    // SIGTERM as soon as the first answer is out: the others are in flight or queued.
    await Promise.race(requests);
    const signalledAt = performance.now();
    child.kill('SIGTERM');
    const statuses = await Promise.all(requests);
    const code = await exited;
    t.comment(`${framework}: exited ${(performance.now() - signalledAt).toFixed(0)} ms after SIGTERM`);
    t.equal(code, 0, 'the process exited by itself, cleanly');
    if (code !== 0) t.comment(output);
    t.match(output, /SIGTERM: finishing the requests in flight[\s\S]*closed/);
    const ok = statuses.filter((s) => s === 200).length;
    t.ok(ok > 1, `requests in flight were answered (${ok} of 100)`);
    // Refused: the connection closed, or (Fastify, return503OnClosing) a 503 to a request that
    // reached the app once it was closing.
    t.same(
      statuses.filter((s) => s !== 200 && s !== 'refused' && s !== 503),
      [],
      'the others were refused, not failed',
    );
    const { rows } = await admin.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table} WHERE text = 'simple'`);
    t.equal(rows[0]?.n, ok, 'every 200 has its row, and no refused request wrote one');
  });
}
