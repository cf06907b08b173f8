// Runs a command with DATABASE_URL pointing at a PostgreSQL server (see database.ts for which),
// and stops the server afterwards if it started one. Used by `pnpm test`, `example`, `chaos` and
// `bench`.
//
//   tsx scripts/with-db.ts <command> [args…]
import { spawn } from 'node:child_process';
import { resolveDatabase } from './database.js';

const [command, ...args] = process.argv.slice(2);
if (command === undefined) {
  console.error('usage: tsx scripts/with-db.ts <command> [args…]');
  process.exit(2);
}
const db = await resolveDatabase((line) => console.error(`[with-db] ${line}`));
const child = spawn(command, args, {
  stdio: 'inherit',
  shell: process.platform === 'win32',
  env: { ...process.env, DATABASE_URL: db.url },
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => child.kill(signal));
}
const code = await new Promise<number>((resolve) => {
  child.on('exit', (exitCode, signal) => resolve(exitCode ?? (signal ? 1 : 0)));
});
await db.stop();
process.exit(code);
