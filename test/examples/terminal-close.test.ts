// `pnpm example` in a real terminal that is closed while a request is in flight. terminal.test.ts
// signals the process group with pipes for stdio; here the example runs in a pseudo-terminal
// (Python's pty module) with an interactive bash, and the terminal is closed by killing the
// process holding its master side, as closing a terminal window does (the kernel hangs the
// terminal up; bash sends SIGHUP to its foreground job). The request in flight is finished and
// committed, then the server stops, though its log lines now fail (EIO on the hung-up terminal).
import { spawn, spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { freePort } from '../../scripts/database.js';
import { admin, eventually, uniqueName } from '../fixtures/db.js';
import { answers, exampleProject, killListeners, lockTable, request, waitsForLock } from '../fixtures/example-run.js';

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

t.test(
  'closing the terminal lets the request in flight finish, then stops the server',
  { skip: !python && 'python3 with its pty module is needed' },
  async (t) => {
    const dir = await exampleProject(t);
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
    t.teardown(() => {
      term.kill('SIGKILL');
      killListeners(port);
    });
    t.ok(await eventually(() => answers(base), 30_000), 'the example came up in the terminal');

    const lock = await lockTable(t, table);
    const inFlight = request(`${base}/simple`);
    t.ok(await waitsForLock(table), 'the request is in flight, waiting for the lock');

    term.kill('SIGKILL'); // the terminal window closes
    await new Promise((resolve) => setTimeout(resolve, 1000));
    await lock.release();
    const status = await inFlight;
    const down = await eventually(async () => !(await answers(base)), 15_000);
    t.ok(down, 'the server stopped');
    t.equal(status, 200, 'the request in flight was finished, not cut');
    const { rows } = await admin.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`);
    t.equal(rows[0]?.n, '1', "the request's row was committed");
    if (status !== 200) t.comment(output.split('\n').slice(-4).join('\n'));
  },
);
