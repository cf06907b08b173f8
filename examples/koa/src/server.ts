// `pnpm example koa` (or `PORT=3000 tsx examples/koa/src/server.ts` with DATABASE_URL set): the
// example app on 127.0.0.1, against the database.
import { storeFromEnv } from '@context-db/examples-shared';
import { buildApp, routes } from './app.js';

const store = await storeFromEnv();
const port = Number(process.env.PORT ?? 3000);
const server = buildApp(store).listen(port, '127.0.0.1', () => {
  const url = `http://127.0.0.1:${port}`;
  console.log(`context-db Koa example on ${url} (table ${store.table})`);
  for (const route of routes) console.log(`  ${route}`);
});

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    server.close();
    server.closeAllConnections(); // keep-alive sockets would hold close() open
    void store.db.close();
  });
}
