// `pnpm example express` (or `PORT=3000 tsx examples/express/src/server.ts` with DATABASE_URL set).
import { closeOnSignals, storeFromEnv } from '@context-db/examples-shared';
import { buildApp, routes } from './app.js';

const store = await storeFromEnv();
const port = Number(process.env.PORT ?? 3000);
const server = buildApp(store).listen(port, '127.0.0.1', () => {
  console.log(`context-db Express example on http://127.0.0.1:${port}`);
  for (const route of routes) console.log(`  ${route}`);
});

// SIGTERM: server.close() stops accepting and waits for the requests in flight, which commit as
// usual; then the database closes.
closeOnSignals({ server, stop: () => new Promise<void>((done) => server.close(() => done())), db: store.db });
