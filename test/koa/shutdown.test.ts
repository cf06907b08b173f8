// The graceful shutdown of the README (stop accepting, drain, then db.close()) with 200 requests
// in flight: every response agrees with the database, nothing is left open, and a request after
// db.close() gets 503.
import t from 'tap';
import { gracefulShutdown } from '../fixtures/cancel.js';

t.test('SIGTERM with 200 requests in flight', (t) => gracefulShutdown(t, 'koa'));
