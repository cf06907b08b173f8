// Client aborts over a real socket: the running statement is cancelled (PostgreSQL's cancel
// request) and the connection is back in the pool at once; requests aborted while waiting for a
// connection run nothing. The scenarios are shared by the three adapters (test/fixtures/cancel.ts).
import t from 'tap';
import { abortDuringStatement, abortWhileWaiting } from '../fixtures/cancel.js';

t.test('a client that leaves during pg_sleep(3) frees its connection within 200 ms', (t) =>
  abortDuringStatement(t, 'koa'),
);
t.test('60 aborted requests, 40 of them waiting for a pool of 20: nothing out, nothing run', (t) =>
  abortWhileWaiting(t, 'koa'),
);
