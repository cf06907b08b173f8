// Review of issue #15 (newcomer experience): `pnpm example` stopped from a terminal. A terminal
// signals its whole foreground process group (pnpm, the shell pnpm starts, scripts/example.ts),
// so the test starts pnpm in a process group of its own and signals the group, as Ctrl-C and a
// closed terminal window do. pnpm runs a copy of the `example` script without its `pnpm build`
// (the build would empty dist/ under test files running beside this one); the shape is the same:
// `sh -c "<a step> && node --import tsx scripts/example.ts"`.
import { execFileSync, spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { freePort } from '../../scripts/database.js';
import { admin, eventually, uniqueName } from '../fixtures/db.js';

const root = join(import.meta.dirname, '../..');
// REVIEW_RUN_TODO=1 runs the open assertions as ordinary ones, to see them fail.
const runTodo = process.env.REVIEW_RUN_TODO === '1';

async function startExample(t: Test) {
  const dir = await mkdtemp(join(tmpdir(), 'example-terminal-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(
    join(dir, 'package.json'),
    JSON.stringify({
      name: 'example-terminal',
      private: true,
      scripts: { example: `cd ${JSON.stringify(root)} && node --import tsx scripts/example.ts` },
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
  return { child, exited, answers, up, output: () => output, port };
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
  process.kill(-(run.child.pid as number), 'SIGINT');
  const code = await run.exited;
  t.match(run.output(), /SIGINT: finishing the requests in flight[\s\S]*closed/, 'the app shut down cleanly');
  t.equal(code, 0, 'pnpm exits 0 (the README: "closes the pool and exits 0")', {
    todo:
      !runTodo &&
      'pnpm 10 answers the SIGINT it gets from the terminal itself: exit 130 and "ELIFECYCLE Command failed", though the app exited 0',
  });
  t.notMatch(run.output(), /ELIFECYCLE/, 'no "ELIFECYCLE Command failed"', {
    todo: !runTodo && 'pnpm 10 prints "ELIFECYCLE Command failed" on Ctrl-C',
  });
});

t.test('closing the terminal (SIGHUP to its process group) stops the example server', async (t) => {
  const run = await startExample(t);
  t.ok(run.up, 'the example came up');
  process.kill(-(run.child.pid as number), 'SIGHUP');
  await run.exited;
  const down = await eventually(async () => !(await run.answers()), 10_000);
  t.ok(down, 'nothing answers on the port any more', {
    todo:
      !runTodo &&
      'scripts/example.ts starts the server detached (a session of its own) and forwards only SIGINT/SIGTERM: on SIGHUP it dies and the server is orphaned, keeping the port (the next `pnpm example` fails with EADDRINUSE) and its pool',
  });
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
