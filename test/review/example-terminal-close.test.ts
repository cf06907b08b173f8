// Review of 9fc9add: `pnpm example` in a real terminal that is closed while a request is in
// flight. test/examples/terminal.test.ts signals the process group with pipes for stdio; here the
// example runs in a pseudo-terminal (Python's pty module) with an interactive bash, and the
// terminal is closed by killing the process holding its master side, as closing a terminal window
// does (the kernel hangs the terminal up; bash sends SIGHUP to its foreground job). The request in
// flight is finished and committed, then the server stops: this held. Seen with strace on the way:
// the server's shutdown log lines hit the hung-up terminal (write: EIO), and after its last line
// ('closed') the process ends on an unhandled 'error' event of process.stdout, exit code 1 instead
// of 0 (nobody is left to see it).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { freePort } from '../../scripts/database.js';
import { admin, eventually, uniqueName } from '../fixtures/db.js';

const root = join(import.meta.dirname, '../..');
const build = 'pnpm build && ';

const python = spawnSync('python3', ['-c', 'import pty'], { stdio: 'ignore' }).status === 0 ? 'python3' : undefined;

// A terminal: bash -i on a pseudo-terminal, given one command line; its output is relayed to
// stdout. The terminal closes when this process ends (the kernel closes the master side).
const terminal = `
import os, pty, select, sys
pid, fd = pty.fork()
if pid == 0:
    os.execvp('bash', ['bash', '--norc', '--noprofile', '-i'])
os.write(fd, (sys.argv[1] + '\\n').encode())
while True:
    ready, _, _ = select.select([fd], [], [], 1.0)
    if ready:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        sys.stdout.write(data.decode(errors='replace'))
        sys.stdout.flush()
`;

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

t.test(
  'closing the terminal lets the request in flight finish, then stops the server',
  { skip: !python && 'python3 with its pty module is needed' },
  async (t) => {
    const { scripts } = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    };
    const script = scripts.example ?? '';
    t.ok(script.startsWith(build), 'the example script starts with the build');
    const dir = await mkdtemp(join(tmpdir(), 'review-terminal-close-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    await writeFile(
      join(dir, 'package.json'),
      JSON.stringify({
        name: 'review-terminal-close',
        private: true,
        scripts: { example: `cd ${JSON.stringify(root)} && ${script.slice(build.length)}` },
      }),
    );
    await mkdir(join(dir, 'node_modules'));
    await writeFile(join(dir, 'terminal.py'), terminal);
    const port = await freePort();
    const table = uniqueName('example_hup');
    t.teardown(() => admin.query(`DROP TABLE IF EXISTS ${table}`));
    const term = spawn('python3', [join(dir, 'terminal.py'), `cd ${JSON.stringify(dir)} && pnpm run example`], {
      env: { ...process.env, PORT: String(port), EXAMPLE_TABLE: table, FORCE_COLOR: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    term.stdout.on('data', (chunk) => (output += chunk));
    term.stderr.on('data', (chunk) => (output += chunk));
    const base = `http://127.0.0.1:${port}`;
    const answers = async () => (await fetch(`${base}/health`).catch(() => undefined))?.ok === true;
    t.teardown(async () => {
      term.kill('SIGKILL');
      // Whatever still listens on the port is the test's: stop it.
      const pids = execFileSync('sh', ['-c', `ss -ltnpH 'sport = :${port}' | grep -o 'pid=[0-9]*' | cut -d= -f2`])
        .toString()
        .split(/\s+/)
        .filter(Boolean);
      for (const pid of pids) process.kill(Number(pid), 'SIGKILL');
    });
    t.ok(await eventually(answers, 30_000), 'the example came up in the terminal');

    // A request in flight: its INSERT waits for a lock the test holds.
    const lock = await admin.connect();
    t.teardown(() => lock.release());
    await lock.query(`BEGIN; LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`);
    const inFlight = post(`${base}/simple`);
    const waiting = async () =>
      Number(
        (
          await admin.query<{ n: string }>(
            `SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1`,
            [`%${table}%`],
          )
        ).rows[0]?.n,
      ) > 0;
    t.ok(await eventually(waiting, 10_000), 'the request is in flight, waiting for the lock');

    term.kill('SIGKILL'); // the terminal window closes
    await new Promise((resolve) => setTimeout(resolve, 1000));
    await lock.query('COMMIT');
    const status = await inFlight;
    const down = await eventually(async () => !(await answers()), 15_000);
    t.ok(down, 'the server stopped');
    t.equal(status, 200, 'the request in flight was finished, not cut');
    const { rows } = await admin.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`).catch(() => ({
      rows: [{ n: 'no table' }],
    }));
    t.equal(rows[0]?.n, '1', "the request's row was committed");
    if (status !== 200) t.comment(output.split('\n').slice(-4).join('\n'));
  },
);
