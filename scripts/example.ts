// `pnpm example [fastify|express|koa]`: runs that example app (Fastify by default) against the
// database scripts/with-db.ts finds or starts.
import { spawn } from 'node:child_process';

const frameworks = ['fastify', 'express', 'koa'];
const framework = process.argv[2] ?? 'fastify';
if (!frameworks.includes(framework)) {
  console.error(`usage: pnpm example [${frameworks.join('|')}]`);
  process.exit(2);
}
const child = spawn('tsx', ['scripts/with-db.ts', 'tsx', `examples/${framework}/src/server.ts`], { stdio: 'inherit' });
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => child.kill(signal));
child.on('exit', (code) => process.exit(code ?? 1));
