// `pnpm example express` (or `PORT=3000 tsx examples/express/src/server.ts` with DATABASE_URL set).
import { storeFromEnv } from '@context-db/examples-shared';
import { buildApp, routes } from './app.js';

const store = await storeFromEnv();
const port = Number(process.env.PORT ?? 3000);
const server = buildApp(store).listen(port, '127.0.0.1', () => {
  console.log(`context-db Express example on http://127.0.0.1:${port}`);
  for (const route of routes) console.log(`  ${route}`);
});

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    server.close();
    server.closeAllConnections();
    void store.db.close();
  });
}
