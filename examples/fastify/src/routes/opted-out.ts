import { ContextNotInitiatedError, dbSession } from '@context-db/core';
import { type ExampleStore, withoutContext } from '@context-db/examples-shared';
import type { FastifyInstance } from 'fastify';

/** A route without a context: dbSession() throws, a session of its own still works. */
export function optedOutRoute(app: FastifyInstance, store: ExampleStore): void {
  app.post('/opted-out', { config: { contextDb: false } }, async () => {
    await withoutContext(store);
    const dbSessionError = await dbSession(store.db).then(
      () => undefined,
      (err: unknown) => err,
    );
    return { ok: true, dbSessionThrows: dbSessionError instanceof ContextNotInitiatedError };
  });
}
