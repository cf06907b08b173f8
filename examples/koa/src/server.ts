// `pnpm example koa` (or `PORT=3000 tsx examples/koa/src/server.ts` with DATABASE_URL set): the
// example app on 127.0.0.1, against the database.
import { closeOnSignals, storeFromEnv } from '@context-db/examples-shared';
import { buildApp, routes } from './app.js';

const store = await storeFromEnv();
const port = Number(process.env.PORT ?? 3000);
const server = buildApp(store).listen(port, '127.0.0.1', () => {
  const url = `http://127.0.0.1:${port}`;
  console.log(`context-db Koa example on ${url} (table ${store.table})`);
  for (const route of routes) console.log(`  ${route}`);
});

// SIGTERM: server.close() stops accepting and waits for the requests in flight, which commit as
// usual; then the database closes.
closeOnSignals({ server, stop: () => new Promise<void>((done) => server.close(() => done())), db: store.db });
