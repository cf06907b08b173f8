// `pnpm example` stopped from a terminal. A terminal signals its whole foreground process group
// (pnpm, and scripts/example.ts, which the script `exec`s), so the test starts pnpm in a process
// group of its own and signals the group, as Ctrl-C and a closed terminal window do. pnpm runs the
// root package.json's `example` script without its leading `pnpm build` (a build would empty
// dist/ under test files running beside this one).
import { execFileSync, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { freePort } from '../../scripts/database.js';
import { admin, eventually, uniqueName } from '../fixtures/db.js';

const root = join(import.meta.dirname, '../..');
const build = 'pnpm build && ';

async function exampleScript(): Promise<string> {
  const { scripts } = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as {
    scripts: Record<string, string>;
  };
  const script = scripts.example ?? '';
  if (!script.startsWith(build)) throw new Error(`the example script no longer starts with '${build}': ${script}`);
  return `cd ${JSON.stringify(root)} && ${script.slice(build.length)}`;
}

function request(url: string, method: string, agent: http.Agent): Promise<number | 'error'> {
  return new Promise((resolve) => {
    const req = http.request(url, { method, agent }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', () => resolve('error'));
    });
    req.on('error', () => resolve('error'));
    req.end();
  });
}

async function startExample(t: Test) {
  const dir = await mkdtemp(join(tmpdir(), 'example-terminal-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(
    join(dir, 'package.json'),
    JSON.stringify({
      name: 'example-terminal',
      private: true,
      scripts: { example: await exampleScript() },
    }),
  );
  // pnpm would warn that this folder has no node_modules; an empty one keeps its output to the point.
  await mkdir(join(dir, 'node_modules'));
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
  const base = `http://127.0.0.1:${port}`;
  const answers = async () => (await fetch(`${base}/health`).catch(() => undefined))?.ok === true;
  const up = await eventually(answers, 30_000);
  return { child, exited, answers, up, output: () => output, port, base };
}

t.test('Ctrl-C on `pnpm example` exits 0, without pnpm reporting a failed command', async (t) => {
  const run = await startExample(t);
  t.teardown(() => {
    // The group is gone when the run went as it should.
    try {
      if (run.child.pid !== undefined) process.kill(-run.child.pid, 'SIGKILL');
    } catch {}
  });
  t.ok(run.up, 'the example came up');
  // Requests in flight at the Ctrl-C, on connections the server has already accepted (opened by a
  // first round): one Ctrl-C lets them finish, a second one would cut them.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 20 });
  t.teardown(() => agent.destroy());
  const opened = await Promise.all(Array.from({ length: 20 }, () => request(`${run.base}/health`, 'GET', agent)));
  t.same(new Set(opened), new Set([200]), '20 connections open');
  const inFlight = Array.from({ length: 20 }, () => request(`${run.base}/early-close`, 'POST', agent));
  await Promise.race(inFlight);
  process.kill(-(run.child.pid as number), 'SIGINT');
  const statuses = await Promise.all(inFlight);
  const code = await run.exited;
  // The terminal's SIGINT and pnpm's relay of it are one Ctrl-C: the requests in flight finished.
  t.same(new Set(statuses), new Set([200]), 'the requests in flight were answered, none cut');
  t.match(run.output(), /SIGINT: finishing the requests in flight[\s\S]*closed/, 'the app shut down cleanly');
  t.equal(code, 0, 'pnpm exits 0 (the README: "closes the pool and exits 0")');
  t.notMatch(run.output(), /ELIFECYCLE/, 'no "ELIFECYCLE Command failed"');
  t.notMatch(run.output(), /again: cutting/, 'the app saw one Ctrl-C, not a second one');
});

t.test('closing the terminal (SIGHUP to its process group) stops the example server', async (t) => {
  const run = await startExample(t);
  t.ok(run.up, 'the example came up');
  process.kill(-(run.child.pid as number), 'SIGHUP');
  await run.exited;
  const down = await eventually(async () => !(await run.answers()), 10_000);
  t.ok(down, 'nothing answers on the port any more (the server, in a session of its own, was stopped)');
  if (!down) {
    // Stop the orphan the test made: the process listening on its port.
    const pids = execFileSync('sh', ['-c', `ss -ltnpH 'sport = :${run.port}' | grep -o 'pid=[0-9]*' | cut -d= -f2`])
      .toString()
      .split(/\s+/)
      .filter(Boolean);
    for (const pid of pids) process.kill(Number(pid), 'SIGTERM');
    await eventually(async () => !(await run.answers()), 10_000);
  }
});
