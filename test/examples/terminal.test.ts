// `pnpm example` stopped from a terminal. A terminal signals its whole foreground process group
// (pnpm and scripts/example.ts, which pnpm runs in its own shell: shellEmulator in
// pnpm-workspace.yaml), so the tests start
// pnpm in a process group of its own and signal the group, as Ctrl-C and a closed terminal window
// do. Ctrl-C lets the requests in flight finish and exits 0 without pnpm's "ELIFECYCLE Command
// failed"; a second Ctrl-C cuts them; SIGHUP stops the server, which runs in a group of its own.
import { spawn } from 'node:child_process';
import http from 'node:http';
import t, { type Test } from 'tap';
import { freePort } from '../../scripts/database.js';
import { admin, eventually, uniqueName } from '../fixtures/db.js';
import { answers, exampleProject, killListeners, lockTable, request, waitsForLock } from '../fixtures/example-run.js';

async function startExample(t: Test) {
  const dir = await exampleProject(t);
  const port = await freePort();
  const table = uniqueName('example');
  t.teardown(() => admin.query(`DROP TABLE IF EXISTS ${table}`));
  const child = spawn('pnpm', ['run', 'example'], {
    cwd: dir,
    env: { ...process.env, PORT: String(port), EXAMPLE_TABLE: table, FORCE_COLOR: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.teardown(() => {
    // The group and the server are gone when the run went as it should.
    try {
      process.kill(-(child.pid as number), 'SIGKILL');
    } catch {}
    killListeners(port);
  });
  const base = `http://127.0.0.1:${port}`;
  const up = await eventually(() => answers(base), 30_000);
  return { group: -(child.pid as number), exited, up, output: () => output, base, table };
}

t.test('Ctrl-C on `pnpm example` finishes the requests in flight and exits 0, without ELIFECYCLE', async (t) => {
  const run = await startExample(t);
  t.ok(run.up, 'the example came up');
  // Requests in flight at the Ctrl-C, on connections the server has already accepted (opened by a
  // first round): one Ctrl-C lets them finish, a second one would cut them.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 20 });
  t.teardown(() => agent.destroy());
  const opened = await Promise.all(Array.from({ length: 20 }, () => request(`${run.base}/health`, 'GET', agent)));
  t.same(new Set(opened), new Set([200]), '20 connections open');
  const inFlight = Array.from({ length: 20 }, () => request(`${run.base}/early-close`, 'POST', agent));
  await Promise.race(inFlight);
  process.kill(run.group, 'SIGINT');
  const statuses = await Promise.all(inFlight);
  const code = await run.exited;
  t.same(new Set(statuses), new Set([200]), 'the requests in flight were answered, none cut');
  t.match(run.output(), /SIGINT: finishing the requests in flight[\s\S]*closed/, 'the app shut down cleanly');
  t.equal(code, 0, 'pnpm exits 0 (the README: "closes the pool and exits 0")');
  t.notMatch(run.output(), /ELIFECYCLE/, 'no "ELIFECYCLE Command failed"');
  t.notMatch(run.output(), /again: cutting/, 'the app saw one Ctrl-C, not two');
});

for (const gapMs of [600, 150]) {
  t.test(`a second Ctrl-C ${gapMs} ms after the first cuts the request in flight`, async (t) => {
    const run = await startExample(t);
    t.ok(run.up, 'the example came up');
    await lockTable(t, run.table);
    const inFlight = request(`${run.base}/simple`);
    t.ok(await waitsForLock(run.table), 'a request is in flight, waiting for the lock');
    process.kill(run.group, 'SIGINT');
    await new Promise((resolve) => setTimeout(resolve, gapMs));
    process.kill(run.group, 'SIGINT');
    const ended = await Promise.race([
      inFlight.then(() => true),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 3000)),
    ]);
    t.ok(ended, 'the request in flight is cut within 3 s (not left to the 10 s grace)');
    t.match(run.output(), /SIGINT again: cutting the requests in flight/, 'the app saw a second Ctrl-C');
  });
}

t.test('closing the terminal (SIGHUP to its process group) stops the example server', async (t) => {
  const run = await startExample(t);
  t.ok(run.up, 'the example came up');
  process.kill(run.group, 'SIGHUP');
  await run.exited;
  const down = await eventually(async () => !(await answers(run.base)), 10_000);
  t.ok(down, 'nothing answers on the port any more (the server, in a group of its own, was stopped)');
});
