// `pnpm example fastify`, or `npx tsx examples/fastify/src/server.ts` with DATABASE_URL set.
import { closeOnSignals, storeFromEnv } from '@context-db/examples-shared';
import { buildApp } from './app.js';

const store = await storeFromEnv();
const app = buildApp(store, { logger: { level: 'warn' } });
const routes: string[] = [];
// buildApp adds its routes when the app loads, so this hook sees them.
app.addHook('onRoute', ({ method, url }) => {
  if (method !== 'HEAD') routes.push(`  ${String(method).padEnd(5)} ${url}`);
});
const url = await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 3000) });
console.log(`context-db Fastify example on ${url}, table ${store.table}`);
console.log(routes.join('\n'));

// SIGTERM: app.close() stops accepting and waits for the requests in flight, which commit as
// usual; then the database closes.
closeOnSignals({ server: app.server, stop: () => app.close(), db: store.db });
