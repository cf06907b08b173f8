import { type ExampleStore, insert, insertThenThrow } from '@context-db/examples-shared';
import type { FastifyInstance } from 'fastify';

/** Automatic rollback: by a thrown error (answered 500) and by an error status code. */
export function rollbackRoutes(app: FastifyInstance, store: ExampleStore): void {
  app.post('/rollback-by-exception', async () => {
    await insertThenThrow(store);
  });
  app.post('/rollback-by-status', async (_request, reply) => {
    await insert(store, 'rollback-by-status');
    return reply.code(422).send({ error: 'rolled back because the status is 422' });
  });
}
