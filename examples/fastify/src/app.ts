import type { ExampleStore } from '@context-db/examples-shared';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { atomicRoutes } from './routes/atomic.js';
import { concurrentRoute } from './routes/concurrent.js';
import { earlyRoutes } from './routes/early.js';
import { kyselyRoutes } from './routes/kysely.js';
import { optedOutRoute } from './routes/opted-out.js';
import { readRoutes } from './routes/read.js';
import { rollbackRoutes } from './routes/rollback.js';
import { simpleRoute } from './routes/simple.js';
import { transactionControlRoutes } from './routes/transaction-control.js';

/** The example app: every route of the seed on `store`, each request in its own context. */
export function buildApp(store: ExampleStore, options: FastifyServerOptions = {}): FastifyInstance {
  const app = Fastify(options);
  app.register(contextDbPlugin, { db: store.db });
  // Registered as a plugin, so the routes are added when the app loads (after the caller's hooks).
  app.register(async (scope) => {
    for (const routes of [
      simpleRoute,
      atomicRoutes,
      rollbackRoutes,
      concurrentRoute,
      earlyRoutes,
      optedOutRoute,
      readRoutes,
      transactionControlRoutes,
      kyselyRoutes,
    ]) {
      routes(scope, store);
    }
  });
  return app;
}
