import {
  ContextNotInitiatedError,
  currentCtx,
  DbConnect,
  type DbSession,
  InvalidOptionsError,
  NestedAtomicBlockError,
  TransactionAlreadyOpenError,
  type TransactionOptions,
  validateTransactionOptions,
} from '@context-db/core';
import type {
  CompiledQuery,
  DatabaseConnection,
  DatabaseIntrospector,
  Dialect,
  DialectAdapter,
  Driver,
  Kysely,
  QueryCompiler,
  QueryResult,
  RootOperationNode,
  TransactionSettings,
} from 'kysely';
import {
  ControlledTransactionBuilder,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  SelectQueryNode,
  SingleConnectionProvider,
} from 'kysely';
import type { QueryResult as PgResult } from 'pg';

/** What a query does outside any context-db context. */
export type OutsideContext = 'throw' | 'pool';

export interface ContextDbDialectConfig {
  /** The database whose context session every query runs on. */
  readonly db: DbConnect;
  /**
   * Outside a context: `'throw'` (default) rejects with `ContextNotInitiatedError`; `'pool'` runs
   * each query, and each transaction, on a session and a pool connection of its own (for
   * scripts, migrations, jobs), each query outside a transaction committed on its own.
   */
  readonly outsideContext?: OutsideContext;
}

const OUTSIDE: readonly OutsideContext[] = ['throw', 'pool'];

/**
 * A Kysely dialect whose every query runs on the current context's session for `db`: it commits
 * or rolls back with the request (or `runInNewCtx`), and sees the request's uncommitted writes.
 * Inside a context, `transaction()` is a savepoint of the context's transaction, rolled back
 * alone when its callback throws. Build the `Kysely` instance once, at module level.
 *
 * @example
 * ```ts
 * export const kdb = new Kysely<Database>({ dialect: new ContextDbDialect({ db }) });
 *
 * export async function addNote(text: string) {
 *   await kdb.insertInto('notes').values({ text }).execute(); // the request's transaction
 * }
 * ```
 */
export class ContextDbDialect implements Dialect {
  readonly #config: Required<ContextDbDialectConfig>;

  constructor(config: ContextDbDialectConfig) {
    const where = 'new ContextDbDialect({ db, outsideContext })';
    if (typeof config !== 'object' || config === null || !(config.db instanceof DbConnect)) {
      throw new InvalidOptionsError(`${where}: db must be a DbConnect, the database the queries run on.`);
    }
    const { db, outsideContext = 'throw', ...rest } = config;
    const unknown = Object.keys(rest)[0];
    if (unknown !== undefined) throw new InvalidOptionsError(`${where}: unknown option "${unknown}".`);
    if (!OUTSIDE.includes(outsideContext)) {
      throw new InvalidOptionsError(
        `${where}: outsideContext must be 'throw' or 'pool', got ${JSON.stringify(outsideContext)}.`,
      );
    }
    this.#config = { db, outsideContext };
  }

  createDriver(): Driver {
    return new ContextDbDriver(this.#config);
  }

  createQueryCompiler(): QueryCompiler {
    return new PostgresQueryCompiler();
  }

  createAdapter(): DialectAdapter {
    return new PostgresAdapter();
  }

  createIntrospector(db: Kysely<unknown>): DatabaseIntrospector {
    return new PostgresIntrospector(db);
  }
}

// The builder transactions open on each session, oldest first: their savepoints nest on the
// server in that order, so only the newest may end (each holds the session, so an older one's
// queries wait for the newer to end).
const openTransactions = new WeakMap<DbSession, SessionConnection[]>();

function overlapped(): NestedAtomicBlockError {
  return new NestedAtomicBlockError(
    'Two Kysely transactions overlapped on one context session. Inside a context each transaction() is a ' +
      "savepoint of the context's transaction, and savepoints on one connection nest: a transaction begun " +
      'while another runs cannot commit or roll back apart from it. Await one before beginning the next, or ' +
      'run the other in runInNewCtx(fn) for a connection of its own.',
  );
}

type Hold = ReturnType<DbSession['hold']>;

/**
 * Whether `fn` of the transaction Kysely is beginning runs in the async context the driver's
 * `beginTransaction` enters (the hold is scoped: work beside it waits), or in its caller's own
 * (the hold is unscoped: work outside the transaction is refused instead of waiting for code
 * that must end it). Kysely tells a driver nothing of the kind, so the stack says:
 * - `startTransaction()`: `ControlledTransactionBuilder.execute` calls it; the work runs in the
 *   caller's context.
 * - `transaction()` on `kdb.connection()`'s instance: its `SingleConnectionProvider` calls it
 *   synchronously from the caller's own frame, so entering a context there would put the
 *   caller's code beside the transaction inside it.
 * - `kdb.transaction()`: called after Kysely awaited the connection, in its own continuation.
 * The classes' own names are read, so that a bundler renaming them renames both.
 */
function beginsScoped(): boolean {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 12;
  const stack = new Error().stack ?? '';
  Error.stackTraceLimit = limit;
  if (stack.includes(` ${ControlledTransactionBuilder.name}.execute `)) return false;
  // Only frames of the synchronous call: "at async …" ones are awaiting callers.
  const sync = stack.split('\n    at async ', 1)[0] ?? '';
  return !sync.includes(` ${SingleConnectionProvider.name}.`);
}

/** Kysely's settings as core's transaction options; undefined when there are none. */
function transactionOptions({ isolationLevel, accessMode }: TransactionSettings): TransactionOptions | undefined {
  if (isolationLevel === undefined && accessMode === undefined) return undefined;
  if (isolationLevel === 'snapshot') {
    throw new InvalidOptionsError(
      "Kysely transaction(): PostgreSQL has no 'snapshot' isolation level; 'repeatable read' is its snapshot isolation.",
    );
  }
  return validateTransactionOptions(
    {
      // PostgreSQL runs 'read uncommitted' as 'read committed'.
      isolationLevel: isolationLevel === 'read uncommitted' ? 'read committed' : isolationLevel,
      readOnly: accessMode === undefined ? undefined : accessMode === 'read only',
    },
    'Kysely transaction()',
  );
}

class ContextDbDriver implements Driver {
  readonly #config: Required<ContextDbDialectConfig>;

  constructor(config: Required<ContextDbDialectConfig>) {
    this.#config = config;
  }

  async init(): Promise<void> {}

  async acquireConnection(): Promise<DatabaseConnection> {
    const { db, outsideContext } = this.#config;
    const ctx = currentCtx();
    if (ctx !== undefined) return new SessionConnection(await ctx.getSession(db), false);
    if (outsideContext === 'pool') return new SessionConnection(await db.createSession(), true);
    throw new ContextNotInitiatedError(
      "A query of a Kysely instance on ContextDbDialect (which runs outside a context with outsideContext: 'pool')",
    );
  }

  // Not async: the hold's async context must be entered in the frame Kysely awaits this from.
  beginTransaction(connection: DatabaseConnection, settings: TransactionSettings): Promise<void> {
    try {
      return (connection as SessionConnection).begin(transactionOptions(settings));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    await (connection as SessionConnection).end(true);
  }

  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    await (connection as SessionConnection).end(false);
  }

  async savepoint(connection: DatabaseConnection, name: string): Promise<void> {
    await (connection as SessionConnection).savepoint(name);
  }

  async rollbackToSavepoint(connection: DatabaseConnection, name: string): Promise<void> {
    await (connection as SessionConnection).endSavepoint(name, false);
  }

  async releaseSavepoint(connection: DatabaseConnection, name: string): Promise<void> {
    await (connection as SessionConnection).endSavepoint(name, true);
  }

  async releaseConnection(connection: DatabaseConnection): Promise<void> {
    const { session, own } = connection as SessionConnection;
    // A context's session is the context's to end; only a session of our own is closed here.
    if (own) await session.close();
  }

  /** The sessions and the pool belong to the DbConnect and its contexts: nothing to end here. */
  async destroy(): Promise<void> {}
}

/**
 * One Kysely "connection": a context session (or, outside a context, a session of its own).
 * Kysely acquires one per query and one per transaction.
 */
class SessionConnection implements DatabaseConnection {
  readonly session: DbSession;
  /** The session is this connection's own (outside a context), not a context's. */
  readonly own: boolean;
  #transaction = false;
  // Inside a context: the savepoint that holds this connection's transaction.
  #savepoint: string | undefined;
  // Kysely's savepoint names, with the core savepoint each stands for, oldest first.
  readonly #savepoints: Array<{ readonly name: string; readonly core: string }> = [];
  // Inside a context: the transaction's hold on the session (the rest of the request waits).
  #hold: Hold | undefined;

  constructor(session: DbSession, own: boolean) {
    this.session = session;
    this.own = own;
  }

  async executeQuery<R>(compiled: CompiledQuery): Promise<QueryResult<R>> {
    const { command, rowCount, rows }: PgResult = await this.#run(() =>
      this.session.query(compiled.sql, compiled.parameters),
    );
    await this.#autocommit();
    const written = command === 'INSERT' || command === 'UPDATE' || command === 'DELETE' || command === 'MERGE';
    return written ? { numAffectedRows: BigInt(rowCount ?? 0), rows: rows as R[] } : { rows: rows as R[] };
  }

  /**
   * Streams a SELECT through core's `session.stream()`: a SQL cursor WITH HOLD, one FETCH per
   * chunk on the session's queue (other queries of the request may run between chunks, which a
   * protocol-level cursor would block), readable to its end after the request's COMMIT (a stream
   * returned as the response body). A statement a cursor cannot hold (an INSERT, UPDATE or
   * DELETE with RETURNING, a data-modifying WITH) runs once and is yielded in chunks.
   */
  async *streamQuery<R>(compiled: CompiledQuery, chunkSize: number): AsyncIterableIterator<QueryResult<R>> {
    if (!declarable(compiled.query)) {
      const { rows } = await this.executeQuery<R>(compiled);
      for (let at = 0; at < rows.length; at += chunkSize) yield { rows: rows.slice(at, at + chunkSize) };
      return;
    }
    // Each step runs as this transaction's work, whichever async context the consumer reads from.
    const chunks = this.#run(() => this.session.stream(compiled.sql, compiled.parameters, chunkSize));
    let failed = false;
    try {
      for (;;) {
        const next = await this.#run(() => chunks.next()).catch((err: unknown) => {
          failed = true;
          throw err;
        });
        if (next.done) break;
        yield { rows: next.value as R[] };
      }
    } finally {
      await this.#run(() => chunks.return?.(undefined));
      if (!failed) await this.#autocommit();
    }
  }

  /**
   * Inside a context a transaction is a savepoint of the context's transaction, begun with it
   * when none is open; options apply only to a transaction it begins. It holds the session as a
   * nested atomic block does: the rest of the request waits until it ends (or, beside a controlled
   * transaction, is refused). Outside, it is the own session's transaction.
   */
  begin(options: TransactionOptions | undefined): Promise<void> {
    const session = this.session;
    if (this.own) {
      session.setTransactionOptions(options);
      this.#transaction = true;
      return Promise.resolve();
    }
    // Synchronously, before any await: the hold enters the async context Kysely runs `fn` in.
    const hold = session.hold(beginsScoped());
    return this.#begin(hold, options).catch((err: unknown) => {
      hold.end();
      throw err;
    });
  }

  async #begin(hold: Hold, options: TransactionOptions | undefined): Promise<void> {
    const session = this.session;
    await hold.ready;
    this.#savepoint = await hold.run(async () => {
      if (options === undefined) return session.beginSavepoint(hold.token);
      await session.drain();
      if (session.inTransaction) {
        throw new TransactionAlreadyOpenError(
          "Kysely's setIsolationLevel() / setAccessMode() were used inside a transaction already open on the " +
            "context session: PostgreSQL fixes them at the transaction's BEGIN. Set them on the route or the " +
            'DbConnect, or begin this transaction before any other query of the request.',
        );
      }
      return session.withOptions(options, () => session.beginSavepoint(hold.token));
    });
    this.#hold = hold;
    this.#transaction = true;
    const open = openTransactions.get(session);
    if (open === undefined) openTransactions.set(session, [this]);
    else open.push(this);
  }

  /** Commit (`commit` true) or roll back this connection's transaction. */
  async end(commit: boolean): Promise<void> {
    this.#transaction = false;
    const session = this.session;
    const first = this.#savepoints[0];
    this.#savepoints.length = 0;
    if (this.own) {
      if (session.closed) return; // a failed commit already ended it
      try {
        // COMMIT and ROLLBACK end the savepoints too, but core ends them first (hooks).
        if (first !== undefined) await session.endSavepoint(first.core, commit);
        await (commit ? session.commit() : session.rollback());
      } catch (err) {
        // Kysely releases the connection of a failed commit only for its own aborted-transaction
        // error: give the session's connection back here, or it stays checked out.
        await session.close();
        throw err;
      }
      return;
    }
    const open = openTransactions.get(session) ?? [];
    const at = open.indexOf(this);
    const name = this.#savepoint as string;
    this.#savepoint = undefined;
    // Gone already: an older transaction that overlapped this one rolled it back with its own.
    if (at === -1) {
      this.#hold?.end();
      this.#hold = undefined;
      if (commit) throw overlapped();
      return;
    }
    // Transactions begun after this one are inside its savepoint: it may not commit past them.
    if (commit && at !== open.length - 1) {
      this.#transaction = true;
      this.#savepoint = name;
      throw overlapped();
    }
    open.splice(at);
    const hold = this.#hold;
    this.#hold = undefined;
    try {
      await this.#run(() => session.endSavepoint(name, commit), hold);
    } finally {
      hold?.end();
    }
  }

  async savepoint(name: string): Promise<void> {
    const token = this.#hold?.token;
    this.#savepoints.push({ name, core: await this.#run(() => this.session.beginSavepoint(token)) });
  }

  /**
   * `release` false: roll back to the savepoint, which stays (Kysely lets the caller roll back to
   * it again or release it): core ends it and opens a fresh one in its place.
   */
  async endSavepoint(name: string, release: boolean): Promise<void> {
    let at = this.#savepoints.length - 1;
    while (at >= 0 && this.#savepoints[at]?.name !== name) at--;
    const found = this.#savepoints[at];
    if (found === undefined)
      throw new InvalidOptionsError(`Kysely savepoint "${name}" is not open on this transaction.`);
    this.#savepoints.splice(at);
    const session = this.session;
    await this.#run(() => session.endSavepoint(found.core, release));
    const token = this.#hold?.token;
    if (!release) this.#savepoints.push({ name, core: await this.#run(() => session.beginSavepoint(token)) });
  }

  /** Run session work as this transaction's, whichever async context Kysely calls from. */
  #run<R>(fn: () => R, hold = this.#hold): R {
    return hold === undefined ? fn() : hold.run(fn);
  }

  /** Outside a transaction, a query on a session of our own commits on its own, as on a pool. */
  async #autocommit(): Promise<void> {
    if (this.own && !this.#transaction) await this.session.commit();
  }
}

/** A SELECT whose WITH clauses are SELECTs too: what PostgreSQL lets DECLARE CURSOR hold. */
function declarable(query: RootOperationNode): boolean {
  return (
    SelectQueryNode.is(query) && (query.with?.expressions.every((cte) => SelectQueryNode.is(cte.expression)) ?? true)
  );
}
