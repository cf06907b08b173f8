// `pnpm example [fastify|express|koa]`: runs that example app (Fastify by default) against the
// database scripts/with-db.ts finds or starts. Ctrl-C (or SIGTERM, or closing the terminal) lets
// the app finish the requests in flight and exits 0; a second one stops it at once.
import { spawn } from 'node:child_process';

const frameworks = ['fastify', 'express', 'koa'];
const framework = process.argv[2] ?? 'fastify';
if (!frameworks.includes(framework)) {
  console.error(`usage: pnpm example [${frameworks.join('|')}]`);
  process.exit(2);
}
// Node with tsx's loader rather than the tsx command, which relays signals through a wrapper
// process of its own. And a process group of their own: Ctrl-C signals every process in the
// terminal's foreground group, so the server would get each SIGINT twice (from the terminal and
// forwarded by with-db.ts) and take the second as "stop now". Here each signal reaches it once.
const tsx = [process.execPath, '--import', 'tsx'];
const child = spawn(
  tsx[0] as string,
  [...tsx.slice(1), 'scripts/with-db.ts', ...tsx, `examples/${framework}/src/server.ts`],
  {
    stdio: 'inherit',
    detached: true,
  },
);
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => child.kill(signal));
// A closed terminal (SIGHUP) would kill this process and leave the server, in a group of its own,
// running with the port and its pool: shut it down as SIGTERM does. A hang-up comes twice (from
// the kernel and from the shell, to its jobs), and a second SIGTERM would cut the requests in
// flight: only the first counts.
let hungUp = false;
process.on('SIGHUP', () => {
  if (!hungUp) child.kill('SIGTERM');
  hungUp = true;
});
child.on('exit', (code) => process.exit(code ?? 1));
