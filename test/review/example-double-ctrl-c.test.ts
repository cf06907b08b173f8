// Review of 9fc9add: a second Ctrl-C on `pnpm example` stops it at once (README: "a second
// Ctrl-C stops it at once"), also an impatient one. scripts/example.ts takes a SIGINT that
// follows another within 300 ms as pnpm's relay of the same Ctrl-C (measured: pnpm's relay comes
// within a millisecond of the terminal's signal), so a second press 150 ms after the first is
// dropped there; it still cuts, because pnpm answers a second SIGINT by sending its child a
// SIGTERM, which example.ts forwards (the server logs "SIGTERM again"). Held at 150 ms and 600 ms
// between presses. As in test/examples/terminal.test.ts, the example script (without its build)
// runs under pnpm in a process group of its own, and the test signals the group as a terminal does.
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

function post(url: string): Promise<number | 'error'> {
  return new Promise((resolve) => {
    const req = http.request(url, { method: 'POST', agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', () => resolve('error'));
    });
    req.on('error', () => resolve('error'));
    req.end();
  });
}

async function startExample(t: Test) {
  const { scripts } = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as {
    scripts: Record<string, string>;
  };
  const script = scripts.example ?? '';
  if (!script.startsWith(build)) throw new Error(`the example script no longer starts with '${build}': ${script}`);
  const dir = await mkdtemp(join(tmpdir(), 'review-double-ctrl-c-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(
    join(dir, 'package.json'),
    JSON.stringify({
      name: 'review-double-ctrl-c',
      private: true,
      scripts: { example: `cd ${JSON.stringify(root)} && ${script.slice(build.length)}` },
    }),
  );
  await mkdir(join(dir, 'node_modules'));
  const port = await freePort();
  const table = uniqueName('example_dbl');
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
  const base = `http://127.0.0.1:${port}`;
  const answers = async () => (await fetch(`${base}/health`).catch(() => undefined))?.ok === true;
  t.teardown(() => {
    try {
      process.kill(-(child.pid as number), 'SIGKILL');
    } catch {}
    // The server runs in a group of its own: stop whatever still listens on the port.
    const pids = execFileSync('sh', ['-c', `ss -ltnpH 'sport = :${port}' | grep -o 'pid=[0-9]*' | cut -d= -f2`])
      .toString()
      .split(/\s+/)
      .filter(Boolean);
    for (const pid of pids) process.kill(Number(pid), 'SIGKILL');
  });
  const up = await eventually(answers, 30_000);
  return { child, base, table, up, output: () => output };
}

for (const gapMs of [600, 150]) {
  t.test(`a second Ctrl-C ${gapMs} ms after the first cuts the requests in flight`, async (t) => {
    const run = await startExample(t);
    t.ok(run.up, 'the example came up');
    // A request in flight: its INSERT waits for a lock the test holds for 8 s.
    const lock = await admin.connect();
    t.teardown(() => lock.release());
    await lock.query(`BEGIN; LOCK TABLE ${run.table} IN ACCESS EXCLUSIVE MODE`);
    const release = setTimeout(() => void lock.query('COMMIT'), 8000);
    t.teardown(() => clearTimeout(release));
    const inFlight = post(`${run.base}/simple`);
    const waiting = async () =>
      Number(
        (
          await admin.query<{ n: string }>(
            `SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1`,
            [`%${run.table}%`],
          )
        ).rows[0]?.n,
      ) > 0;
    t.ok(await eventually(waiting, 10_000), 'the request is in flight, waiting for the lock');

    const group = -(run.child.pid as number);
    process.kill(group, 'SIGINT');
    await new Promise((resolve) => setTimeout(resolve, gapMs));
    process.kill(group, 'SIGINT');
    const cut = await Promise.race([
      inFlight.then((status) => {
        t.comment(`the request in flight ended: ${status}`);
        return true;
      }),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 3000)),
    ]);
    t.ok(cut, 'the request in flight is cut within 3 s (not left to the 10 s grace)');
    t.match(run.output(), /SIG(INT|TERM) again: cutting the requests in flight/, 'the app saw a second stop');
    t.comment(
      run
        .output()
        .split('\n')
        .filter((line) => /SIG|closed|ELIFECYCLE|rror/.test(line))
        .join('\n'),
    );
  });
}
