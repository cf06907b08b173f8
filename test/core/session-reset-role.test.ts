// The session reset ends a SET ROLE with SET SESSION AUTHORIZATION DEFAULT (it has no RESET
// ROLE). The role GUC is GUC_NO_RESET_ALL (RESET ALL leaves it), so any way that the old role
// value could survive and come back is tried here, on one pooled connection (pool max 1): a role
// set by SET ROLE inside a DO block, by set_config('role', …, false), after SET SESSION
// AUTHORIZATION to another role, in a request that rolls back, after an early commitDbSession(),
// in newNonCtxSession(); and in the next request, whether a role change undone by ROLLBACK TO
// SAVEPOINT, or a function with a SET role clause, brings the old role back (the GUC machinery
// restores the value it saved, calling the role's assign hook).
import {
  commitDbSession,
  type DbConnect,
  type DbSession,
  DbSessionCtx,
  dbSession,
  newNonCtxSession,
} from '@context-db/core';
import t from 'tap';
import { activity, admin, checkedOut, eventually, testDb, uniqueName } from '../fixtures/db.js';

async function inCtx<R>(db: DbConnect, statusCode: number, fn: (session: DbSession) => Promise<R>): Promise<R> {
  const ctx = new DbSessionCtx();
  const result = await ctx.run(async () => fn(await dbSession(db)));
  await ctx.finish({ statusCode }).catch(() => {});
  return result;
}

interface Seen {
  readonly pid: number;
  readonly session_user: string;
  readonly current_user: string;
  readonly role: string;
  readonly after_savepoint: string;
  readonly in_function: string;
  readonly after_function: string;
}

async function probe(s: DbSession, fnName: string): Promise<Seen> {
  const first = (
    await s.query<{ pid: number; session_user: string; current_user: string; role: string }>(
      `SELECT pg_backend_pid() AS pid, session_user::text AS session_user, current_user::text AS current_user,
              current_setting('role') AS role`,
    )
  ).rows[0];
  await s.query('SAVEPOINT review_role');
  await s.query(`SELECT set_config('role', $1, true)`, [first?.session_user]);
  await s.query('ROLLBACK TO SAVEPOINT review_role');
  const afterSavepoint = (await s.query<{ u: string }>('SELECT current_user::text AS u')).rows[0]?.u;
  const inFunction = (await s.query<{ u: string }>(`SELECT ${fnName}() AS u`)).rows[0]?.u;
  const afterFunction = (await s.query<{ u: string }>('SELECT current_user::text AS u')).rows[0]?.u;
  return {
    ...(first as NonNullable<typeof first>),
    after_savepoint: afterSavepoint ?? '',
    in_function: inFunction ?? '',
    after_function: afterFunction ?? '',
  };
}

type Leave = (db: DbConnect, roles: { a: string; b: string }) => Promise<number>;
const pidOf = async (s: DbSession) =>
  (await s.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid ?? -1;

const vectors: [string, Leave][] = [
  [
    'SET ROLE in a DO block',
    (db, { a }) =>
      inCtx(db, 200, async (s) => {
        await s.query(`DO $$ BEGIN EXECUTE 'SET ROLE ${a}'; END $$`);
        return pidOf(s);
      }),
  ],
  [
    "set_config('role', …, false)",
    (db, { a }) =>
      inCtx(db, 200, async (s) => {
        await s.query(`SELECT set_config('role', $1, false)`, [a]);
        return pidOf(s);
      }),
  ],
  [
    'SET SESSION AUTHORIZATION to another role, then SET ROLE',
    (db, { a, b }) =>
      inCtx(db, 200, async (s) => {
        const pid = await pidOf(s);
        await s.query(`SET SESSION AUTHORIZATION ${a}`);
        await s.query(`SET ROLE ${b}`);
        return pid;
      }),
  ],
  [
    'SET ROLE in a request that rolls back',
    (db, { a }) =>
      inCtx(db, 500, async (s) => {
        await s.query(`SET ROLE ${a}`);
        return pidOf(s);
      }),
  ],
  [
    'SET ROLE, then SET LOCAL ROLE to another',
    (db, { a, b }) =>
      inCtx(db, 200, async (s) => {
        await s.query(`SET ROLE ${a}`);
        await s.query(`SET LOCAL ROLE ${b}`);
        return pidOf(s);
      }),
  ],
  [
    'an early commitDbSession(), then SET ROLE',
    (db, { a }) =>
      inCtx(db, 200, async (s) => {
        const pid = await pidOf(s);
        await commitDbSession(db);
        await s.query(`SET ROLE ${a}`);
        return pid;
      }),
  ],
  [
    'SET ROLE in newNonCtxSession()',
    (db, { a }) =>
      newNonCtxSession(db, async (s) => {
        await s.query(`SET ROLE ${a}`);
        return pidOf(s);
      }),
  ],
];

for (const [name, leave] of vectors) {
  t.test(`a role left by ${name} is not seen by the next request on the connection`, async (t) => {
    const { db, appName } = testDb(t, { max: 1 });
    const a = uniqueName('rv_a');
    const b = uniqueName('rv_b');
    const fnName = uniqueName('rv_as_me');
    await admin.query(`CREATE ROLE ${a}; CREATE ROLE ${b}; GRANT ${b} TO ${a}`);
    // A function that switches to the connecting user for its call: on exit, PostgreSQL puts
    // back the role value it saved on entry.
    const { rows: me } = await admin.query<{ u: string }>('SELECT current_user::text AS u');
    const user = me[0]?.u ?? '';
    await admin.query(
      `CREATE FUNCTION public.${fnName}() RETURNS text LANGUAGE sql SET role = ${user} AS 'SELECT current_user::text'`,
    );
    t.teardown(async () => {
      await admin.query(`DROP FUNCTION public.${fnName}()`);
      await admin.query(`DROP ROLE ${a}; DROP ROLE ${b}`);
    });
    const firstPid = await leave(db, { a, b });
    const seen = await inCtx(db, 200, (s) => probe(s, `public.${fnName}`));
    t.equal(seen.pid, firstPid, 'the next request got the same connection');
    t.same(
      { ...seen, pid: firstPid },
      {
        pid: firstPid,
        session_user: user,
        current_user: user,
        role: 'none',
        after_savepoint: user,
        in_function: user,
        after_function: user,
      },
      'it runs as the connecting user, and nothing brings the old role back',
    );
    t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
    t.equal((await activity(appName)).idleInTransaction, 0);
  });
}

t.test('control: without the reset, the probe sees the role left behind', async (t) => {
  const { db } = testDb(t, { max: 1 }, { resetSession: false });
  const a = uniqueName('rv_a');
  await admin.query(`CREATE ROLE ${a}`);
  t.teardown(() => admin.query(`DROP ROLE ${a}`));
  await inCtx(db, 200, (s) => s.query(`SET ROLE ${a}`));
  const seen = await inCtx(db, 200, (s) => s.query<{ u: string }>('SELECT current_user::text AS u'));
  t.equal(seen.rows[0]?.u, a, 'the role carries over when nothing resets it');
});
