import { setTimeout as sleep } from 'node:timers/promises';
import { type ExampleStore, earlyClose, earlyCommit, earlyRollback } from '@context-db/examples-shared';
import type { FastifyInstance } from 'fastify';

/** Ending the session's work before the request ends: commit, close, roll back. */
export function earlyRoutes(app: FastifyInstance, store: ExampleStore): void {
  app.post('/early-commit', async () => {
    await earlyCommit(store);
    return { ok: true };
  });
  app.post('/early-close', async () => {
    // The connection is back in the pool while this slow call runs.
    await earlyClose(store, () => sleep(10));
    return { ok: true };
  });
  app.post('/early-rollback', async () => {
    await earlyRollback(store);
    return { ok: true };
  });
}
