// npm can install two copies of @context-db/core (one nested under an adapter whose range the
// app's copy does not satisfy). An error thrown by one copy must still pass the `instanceof`
// checks users write against the other copy's classes, and fail the checks of other classes.
import { DatabaseError } from 'pg';
import t from 'tap';
import * as first from '../../packages/core/src/errors.js';
import { dbSession } from '../../packages/core/src/index.js';
import { testDb } from '../fixtures/db.js';

// The query string makes Node load and evaluate the module again: classes of their own, as a
// second installed copy has.
const secondCopy = '../../packages/core/src/errors.js?second-copy';
const second = (await import(secondCopy)) as typeof first;

t.test('the second copy really has classes of its own', async (t) => {
  t.not(second.ContextDbError, first.ContextDbError);
  t.not(second.SessionClosedError, first.SessionClosedError);
});

t.test("an error of either copy is an instance of the other copy's class and of its base", async (t) => {
  for (const [from, to] of [
    [first, second],
    [second, first],
  ] as const) {
    const closed = new from.SessionClosedError('The session is closed.');
    t.ok(closed instanceof to.SessionClosedError, 'the same class');
    t.ok(closed instanceof to.ContextDbError, 'the base class');
    t.ok(closed instanceof Error);
    t.notOk(closed instanceof to.ContextNotInitiatedError, 'not another subclass');
    t.notOk(closed instanceof to.CommitFailedError, 'not another subclass');
    const base = new from.ContextDbError('SOME_CODE', 'A message.');
    t.ok(base instanceof to.ContextDbError);
    t.notOk(base instanceof to.SessionClosedError, 'a base error is no subclass instance');
  }
});

t.test("a real error from the API passes the second copy's checks", async (t) => {
  const { db } = testDb(t);
  const err = await dbSession(db).catch((e: unknown) => e);
  t.ok(err instanceof first.ContextNotInitiatedError);
  t.ok(err instanceof second.ContextNotInitiatedError);
  t.ok(err instanceof second.ContextDbError);
  t.notOk(err instanceof second.SessionClosedError);
});

t.test('nothing else passes: plain errors, pg errors, look-alikes, primitives', async (t) => {
  const lookAlike = Object.assign(new Error('SESSION_CLOSED'), { code: 'SESSION_CLOSED', name: 'SessionClosedError' });
  for (const value of [
    new Error('plain'),
    new DatabaseError('relation does not exist', 0, 'error'),
    lookAlike,
    { code: 'SESSION_CLOSED' },
    null,
    undefined,
    'SessionClosedError',
    42,
  ]) {
    for (const copy of [first, second]) {
      t.notOk(value instanceof copy.ContextDbError, `${String(value)} is no ContextDbError`);
      t.notOk(value instanceof copy.SessionClosedError, `${String(value)} is no SessionClosedError`);
    }
  }
});

t.test('instanceof narrows the type as before', async (t) => {
  const err: unknown = new second.SessionClosedError('Closed.');
  if (err instanceof first.SessionClosedError) {
    const code: string = err.code;
    t.equal(code, 'SESSION_CLOSED');
  } else {
    t.fail('not recognised');
  }
});
