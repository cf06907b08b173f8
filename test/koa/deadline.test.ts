// Request deadlines (the adapter's deadline option, setDbDeadline in a route): the running
// statement is cancelled, the transaction rolled back, and the response is a 503, never a 2xx.
import t from 'tap';
import { deadlines } from '../fixtures/cancel.js';

t.test('deadlines cancel, roll back and answer 503', (t) => deadlines(t, 'koa'));
