import { AsyncLocalStorage, AsyncResource } from 'node:async_hooks';
import type { Writable } from 'node:stream';
import type { PoolClient, QueryConfig, QueryResult, QueryResultRow } from 'pg';
import { type CancelOutcome, cancelBackend } from './cancel.js';
import {
  CommitFailedError,
  CommitOutcomeUnknownError,
  InvalidOptionsError,
  NestedAtomicBlockError,
  SessionClosedError,
  TransactionAlreadyOpenError,
} from './errors.js';
import { mergeTransactionOptions, type TransactionOptions, validateTransactionOptions } from './transaction.js';

/**
 * Where a session gets its connection and which statements open and end its transactions. The
 * pool driver (`DbConnect.createSession`) opens real transactions; the testing helpers use a
 * savepoint driver on a connection that a test already holds.
 */
export interface SessionDriver {
  acquire(): Promise<PoolClient>;
  /**
   * Stop waiting for the connection `pending` (an `acquire()` not yet settled): it rejects with
   * `reason` now, and the connection, when the pool hands it over, goes straight back.
   */
  withdraw?(pending: Promise<PoolClient>, reason: Error): void;
  /**
   * Which host connections come from now (it changes with `DbConnect.changeHost`): a session
   * holding a connection from an earlier one takes a new connection for its next transaction.
   */
  readonly host?: number;
  /** Give the connection back; `destroy` when it may be unusable or mid-transaction. */
  release(client: PoolClient, destroy: boolean): void;
  /** The options every transaction of the driver's sessions starts from (`DbConnect`'s `transaction`). */
  readonly defaults: TransactionOptions | undefined;
  /** The statement(s) that open a transaction with `options`, in one round trip. */
  beginSql(options: TransactionOptions | undefined): string;
  commitSql(options: TransactionOptions | undefined): string;
  rollbackSql(options: TransactionOptions | undefined): string;
  /** Checks deferred constraints now, before a COMMIT, without ending the transaction. */
  readonly checkSql: string;
  /**
   * Statements that clear what a session can leave on its connection (SET, temporary tables,
   * advisory locks, LISTEN), sent in the same flight as the COMMIT or ROLLBACK that ends the
   * session; empty for none.
   */
  readonly resetSql: string;
}

const DONE: Promise<void> = Promise.resolve();

function start<T>(op: () => Promise<T>): Promise<T> {
  try {
    return op();
  } catch (err) {
    return Promise.reject(err);
  }
}

/** A statement error from the server leaves the connection usable; anything else may not have. */
function connectionLost(err: unknown): boolean {
  return (err as { severity?: unknown } | null)?.severity !== 'ERROR';
}

/**
 * Whether BEGIN can travel with this query: node-postgres with pipeline mode (8.23+), and a plain
 * query, not a cursor or stream (those keep a portal open, which pipeline mode refuses).
 */
function pipelines(client: PoolClient, text: string | QueryConfig<unknown[]>): boolean {
  return (
    typeof (client as { pipeline?: unknown }).pipeline === 'boolean' &&
    (typeof text === 'string' ||
      (typeof (text as { submit?: unknown }).submit !== 'function' && (text as { rows?: unknown }).rows === undefined))
  );
}

/**
 * Run `write`, which sends queries on `client`, with the client's socket corked. node-postgres
 * corks each query's own messages (parse, bind, describe, execute, sync), but not two queries
 * written back to back: BEGIN pipelined with the first query would leave in two writes. A query
 * that waits in node-postgres's own queue is not sent here, and is unaffected.
 */
function corked<T>(client: PoolClient, write: () => T): T {
  const socket = (client as { connection?: { stream?: Partial<Pick<Writable, 'cork' | 'uncork'>> } }).connection
    ?.stream;
  if (socket?.cork === undefined || socket.uncork === undefined) return write();
  socket.cork();
  try {
    return write();
  } finally {
    socket.uncork();
  }
}

/**
 * Send a transaction-control statement (BEGIN, COMMIT, ROLLBACK, savepoints) and get its first
 * command tag ("COMMIT", or "ROLLBACK" for a COMMIT of an aborted transaction). It goes as
 * node-postgres's custom query (the `submit` protocol of pg-cursor), which builds no result
 * objects: with the reset's seven statements, those result objects were most of what a request's
 * session left for the garbage collector to promote under load.
 */
async function control(client: PoolClient, text: string): Promise<string | undefined> {
  if (plainOnly(client)) return firstTag(await client.query(text));
  const statement = ControlStatement.send(client, text);
  await statement.done;
  return statement.tag;
}

/**
 * End a transaction with `end` (one statement: COMMIT or ROLLBACK) and clear the connection with
 * `reset`, in one flight. Once `end` is answered the transaction's outcome is known, whatever
 * happens to the reset after it: a reset that fails (a lock, a timeout, a cancel) leaves the
 * connection's state unknown, not the transaction's, and is returned rather than thrown.
 */
async function endWithReset(
  client: PoolClient,
  end: string,
  reset: string,
): Promise<{ readonly tag: string | undefined; readonly resetFailed: boolean }> {
  if (plainOnly(client)) {
    // Two queries, so that each has its own answer: one flight in pipeline mode.
    const [ended, cleared] = corked(client, () => [client.query(end), client.query(reset)]);
    const resetFailed = cleared.then(
      () => false,
      () => true,
    );
    try {
      return { tag: firstTag(await ended), resetFailed: await resetFailed };
    } catch (err) {
      await resetFailed;
      throw err;
    }
  }
  const statement = ControlStatement.send(client, `${end}; ${reset}`);
  try {
    await statement.done;
    return { tag: statement.tag, resetFailed: false };
  } catch (err) {
    if (statement.tag === undefined) throw err;
    return { tag: statement.tag, resetFailed: true };
  }
}

// pg's pipeline mode refuses custom queries, its native client runs them differently, and a
// leased client (the testing helpers' savepoint sessions run on one) reports why its session was
// cut off only through the promises it returns.
function plainOnly(client: PoolClient): boolean {
  const shape = client as { pipeline?: unknown; connection?: unknown; [LEASED]?: true };
  return shape.pipeline === true || shape.connection === undefined || shape[LEASED] === true;
}

function firstTag(result: QueryResult | QueryResult[]): string | undefined {
  return (Array.isArray(result) ? result[0] : result)?.command;
}

class ControlStatement {
  // node-postgres calls back through this property and may wrap it (query_timeout).
  callback: (err: Error | undefined) => void;
  readonly done: Promise<void>;
  /** The first statement's command tag, once it is answered. */
  tag: string | undefined;
  #finished = false;

  static send(client: PoolClient, text: string): ControlStatement {
    const statement = new ControlStatement(text);
    client.query(statement as unknown as QueryConfig);
    return statement;
  }

  constructor(readonly text: string) {
    let settle: (err: Error | undefined) => void = () => undefined;
    this.done = new Promise((resolve, reject) => {
      settle = (err) => (err === undefined ? resolve() : reject(err));
    });
    this.callback = settle;
  }

  submit(connection: { query(text: string): void }): void {
    connection.query(this.text);
  }

  handleCommandComplete(msg: { text: string }): void {
    this.tag ??= msg.text;
  }

  // node-postgres forgets the query at its error: the ReadyForQuery that follows is not ours.
  handleError(err: Error): void {
    this.#finish(err);
  }

  handleReadyForQuery(): void {
    this.#finish(undefined);
  }

  handleCopyInResponse(connection: { sendCopyFail(message: string): void }): void {
    connection.sendCopyFail('context-db: COPY is not a transaction-control statement');
  }

  handleRowDescription(): void {}
  handleDataRow(): void {}
  handleEmptyQuery(): void {}
  handlePortalSuspended(): void {}
  handleCopyData(): void {}

  #finish(err: Error | undefined): void {
    if (this.#finished) return;
    this.#finished = true;
    this.callback(err);
  }
}

function newLevel(savepoint: string | undefined, token: object | undefined): Level {
  return { savepoint, token, onCommit: [], onRollback: [] };
}

function optionsTooLate(): TransactionAlreadyOpenError {
  return new TransactionAlreadyOpenError(
    'Transaction options were set while a transaction is open (or about to begin) on the session: PostgreSQL ' +
      'fixes them at BEGIN. Set them before the first query: on the DbConnect, the route, or the atomic block.',
  );
}

function endsEnclosing(what: string): NestedAtomicBlockError {
  return new NestedAtomicBlockError(
    `${what} was called inside a nested atomic block: it would end the enclosing transaction, not the block. ` +
      'Return from the block to keep its work, or throw to roll back only the block.',
  );
}

function sealedError(): SessionClosedError {
  return new SessionClosedError("This session's context is finishing (the request has ended).");
}

/** Why a handed-out client may not query now, or undefined when it may. */
type Lease = () => Error | undefined;

/**
 * Whether node-postgres still has a statement of `client`'s running or queued: a query sent on a
 * leased client, or a portal it left open (pg-cursor reads a few rows and keeps the rest on the
 * server). Private fields of pg, read defensively; when absent the answer is no.
 */
function busy(client: PoolClient): boolean {
  const pg = client as unknown as { _getActiveQuery?: () => unknown; _queryQueue?: unknown };
  const active = typeof pg._getActiveQuery === 'function' ? pg._getActiveQuery.call(client) : undefined;
  return (active !== undefined && active !== null) || (Array.isArray(pg._queryQueue) && pg._queryQueue.length > 0);
}

// The exclusive (atomic) blocks the calling code runs inside, by token.
const blocks = new AsyncLocalStorage<ReadonlySet<object>>();

/** A block holding the session: an atomic block, a finishing context's beforeCommit, a builder's transaction. */
interface Block {
  readonly token: object;
  readonly atomic: boolean;
  /**
   * False for a hold whose work cannot be told apart by async context (a query builder's
   * controlled transaction): work from outside it is refused rather than queued, since the code
   * that must end it is, as likely as not, the code that would wait.
   */
  readonly scoped: boolean;
  /** The block it nests in; relinked when that one ends first. */
  outer: Block | undefined;
  readonly ended: Promise<void>;
  end(): void;
}

/**
 * @internal A hold on a session begun and ended by separate calls (`DbSession.hold`), for query
 * builders whose transactions have no callback to run inside.
 */
export interface SessionHold {
  /** Identifies the hold's savepoints (`beginSavepoint(token)`), so that hooks from outside skip them. */
  readonly token: object;
  /** Resolves once the session is held: blocks the caller is not inside have ended. */
  readonly ready: Promise<void>;
  /** Run `fn` as work inside the hold (the transaction's own statements, made from any context). */
  run<R>(fn: () => R): R;
  /** Let the session go: work from outside that waited runs. Safe to call twice. */
  end(): void;
}

// Streams dropped unread-to-the-end without being closed: their cursors are closed when collected.
const abandonedStreams = new FinalizationRegistry<() => void>((close) => close());

function heldElsewhere(): TransactionAlreadyOpenError {
  return new TransactionAlreadyOpenError(
    "Work on the context's session ran outside a transaction still open on it that was begun without a " +
      "scope (Kysely's startTransaction(), or transaction() on kdb.connection()'s instance). On the request's " +
      'connection that transaction is a savepoint, so this work would be rolled back with it; and it cannot wait ' +
      'for it to end, since the code that must end it is likely the code waiting. Run it on the transaction ' +
      '(trx), or after it ends; or use kdb.transaction().execute(fn), beside which the rest of the request ' +
      'waits its turn.',
  );
}

function abandonedError(): CommitFailedError {
  return new CommitFailedError({
    reason:
      "a transaction begun without a scope (Kysely's startTransaction()) was neither committed nor rolled back when the " +
      "context ended, so the context's transaction was rolled back with it",
  });
}

type Listener = (...args: unknown[]) => void;

/** A callback run after the transaction it was registered in commits (`onCommit`) or rolls back. */
export type TransactionHook = () => unknown;

interface Due {
  readonly kind: 'onCommit' | 'onRollback';
  readonly fn: TransactionHook;
}

/** The hooks of one transaction level: the transaction itself, or a nested block's savepoint. */
interface Level {
  /** The savepoint's name; undefined for the transaction. */
  readonly savepoint: string | undefined;
  /** The block that opened the savepoint: hooks registered from inside it belong to it. */
  readonly token: object | undefined;
  readonly onCommit: Registered[];
  readonly onRollback: Registered[];
}

/** A hook and when it was registered: hooks run in that order, whichever level they ended in. */
interface Registered {
  readonly fn: TransactionHook;
  readonly order: number;
}

let savepointCounter = 0;
let cursorCounter = 0;
let hookCounter = 0;

const reportHookError = (err: unknown, kind: string): void => {
  console.error(`context-db: an ${kind} hook threw; the transaction's outcome stands.`, err);
};

interface Leased {
  readonly client: PoolClient;
  /** Take off the listeners added through it, when the session lets the connection go. */
  revoke(): void;
}

const LEASED: unique symbol = Symbol('context-db.leased');

/**
 * The session's client as handed to callers of `client()`: the same `pg` client, but its `query`
 * fails with `SessionClosedError` whenever the session's own work would (and after the session
 * gave the connection back), so that a kept reference cannot run inside the next request's
 * transaction on that connection. Callbacks and listeners given to it run in the caller's async
 * context (the socket's is no request's), and the listeners leave with the session: the next
 * request's notifications never reach them.
 */
function leasedClient(client: PoolClient, lease: Lease, translate: (err: unknown) => unknown): Leased {
  const added: Array<[string | symbol, Listener]> = [];
  const bound = new WeakMap<Listener, Listener>();
  let proxy!: PoolClient;
  const query = (...args: unknown[]): unknown => {
    const last = args.length - 1;
    const callback = typeof args[last] === 'function' ? (args[last] as (e: Error) => void) : undefined;
    const err = lease();
    if (err === undefined) {
      if (callback !== undefined) {
        const inCaller = AsyncResource.bind(callback);
        args[last] = (e: unknown, ...rest: unknown[]) =>
          (inCaller as (...a: unknown[]) => void)(e && translate(e), ...rest);
      }
      const sent = (client.query as (...a: unknown[]) => unknown)(...args);
      // A statement cancelled because the session was cut off reports why, as session.query does.
      return sent instanceof Promise ? sent.catch((e: unknown) => Promise.reject(translate(e))) : sent;
    }
    if (callback !== undefined) {
      process.nextTick(callback, err);
      return undefined;
    }
    if (typeof (args[0] as { submit?: unknown } | null)?.submit === 'function') throw err;
    return Promise.reject(err);
  };
  const listen =
    (method: 'on' | 'once' | 'prependListener' | 'prependOnceListener') =>
    (event: string | symbol, listener: Listener): PoolClient => {
      const inCaller = AsyncResource.bind(listener);
      bound.set(listener, inCaller);
      added.push([event, inCaller]);
      (client[method] as (e: string | symbol, l: Listener) => unknown).call(client, event, inCaller);
      return proxy;
    };
  const unlisten = (event: string | symbol, listener: Listener): PoolClient => {
    client.off(event, bound.get(listener) ?? listener);
    return proxy;
  };
  const own: Record<string | symbol, unknown> = {
    [LEASED]: true,
    query,
    // The session owns the connection: a release() from a query builder must not return it early.
    release: () => {},
    on: listen('on'),
    addListener: listen('on'),
    once: listen('once'),
    prependListener: listen('prependListener'),
    prependOnceListener: listen('prependOnceListener'),
    off: unlisten,
    removeListener: unlisten,
  };
  proxy = new Proxy(client, {
    get(target, property) {
      return Object.hasOwn(own, property) ? own[property] : Reflect.get(target, property, target);
    },
  });
  return {
    client: proxy,
    revoke() {
      for (const [event, listener] of added.splice(0)) client.off(event, listener);
    },
  };
}

/**
 * One lazily connected database session: no connection is taken until the first query, which
 * acquires one and sends BEGIN. After a commit or rollback the next query begins a new
 * transaction on the same connection. Get the context's session with `dbSession(db)`, or a
 * session of your own with `db.createSession()`.
 *
 * @example
 * ```ts
 * await using session = await db.createSession();
 * await session.query('INSERT INTO notes (text) VALUES ($1)', ['hello']);
 * await session.commit();
 * ```
 */
export class DbSession implements AsyncDisposable {
  readonly #driver: SessionDriver;
  #client: PoolClient | undefined;
  #leased: Leased | undefined;
  #inTransaction = false;
  #closed = false;
  // The end() under way or done: a second call (a rollback racing a commit) waits for the same.
  #ending: Promise<void> | undefined;
  // Set when the owning context starts finishing: from then on only the context ends the session.
  #sealed = false;
  // Why the session was cut off (its context aborted): the error queued and later work gets.
  #cut: Error | undefined;
  #broken = false;
  // The driver's host the connection came from.
  #host: number | undefined;
  // The connection being awaited from the pool: withdrawn if the session is cut off meanwhile.
  #acquiring: Promise<PoolClient> | undefined;
  // The connection may carry session state (a transaction ran on it since the last reset).
  #dirty = false;
  // node-postgres deprecates overlapping client.query() calls, so the session keeps its own
  // queue: every operation starts after the previous one settled, in call order. That is also
  // what makes two concurrent first queries share one connection.
  #tail: Promise<void> = DONE;
  /** Operations enqueued and not yet settled. */
  #pending = 0;
  // An atomic block (or a finishing context's beforeCommit, or a builder's transaction) holds the
  // session: work from outside it waits until it has ended. The innermost; each links its outer.
  #block: Block | undefined;
  // A controlled hold the finishing context found still open: the context's commit fails.
  #abandoned: CommitFailedError | undefined;
  // The cursors of stream() open on the connection, by name: the transaction level they were
  // declared at (levels.length then), 0 once a COMMIT made them outlive their transaction.
  #cursors: Map<string, number> | undefined;
  // Ended with a COMMIT while streams were still open: the connection is kept for their FETCHes
  // and given back when the last one closes.
  #retained = false;
  // Transaction options: the session's (the database's defaults under its context's), those of
  // the atomic block running now, and those the open transaction began with.
  #options: TransactionOptions | undefined;
  #blockOptions: TransactionOptions | undefined;
  #current: TransactionOptions | undefined;
  // levels[0] is the transaction; each nested block's savepoint adds one. Made on first need.
  #levels: Level[] | undefined;
  // Hooks whose transaction level has ended, waiting to run outside the session's queue.
  #due: Due[] | undefined;
  /** @internal Where a throwing hook is reported; adapters route it to the framework's logger. */
  hookErrors: (err: unknown, kind: string) => void = reportHookError;

  // The statement that was running when the session was cut off rejects with the reason, not
  // with PostgreSQL's "canceling statement due to user request", nor with the lost connection
  // when the cancel did not stop it in time and the cut closed the connection instead.
  readonly #cutReason = (err: unknown): unknown =>
    this.#cut !== undefined && ((err as { code?: unknown } | null)?.code === '57014' || connectionLost(err))
      ? this.#cut
      : err;
  readonly #cancelled = (err: unknown): never => {
    // The last statement error of the transaction: what a COMMIT answered with ROLLBACK reports
    // as its cause (so that a caught serialization failure still makes a retried block retry).
    if (this.#inTransaction && !connectionLost(err)) this.#abortedBy = err;
    throw this.#cutReason(err);
  };
  #abortedBy: unknown;

  readonly #onClientError = (): void => {
    // A checked-out pg client that loses its backend emits 'error'; unhandled, that would crash
    // the process. The pending query rejects on its own; we only remember not to reuse it.
    this.#broken = true;
  };

  /** @internal Sessions are made by `DbConnect.createSession()` and `dbSession()`. */
  constructor(driver: SessionDriver) {
    this.#driver = driver;
    this.#options = driver.defaults;
  }

  /** True while a transaction is open on this session's connection. */
  get inTransaction(): boolean {
    return this.#inTransaction;
  }

  /** @internal The options the open transaction began with. */
  get transactionOptions(): TransactionOptions | undefined {
    return this.#current;
  }

  /** True once `close()` ran (directly or when the session's context finished). */
  get closed(): boolean {
    return this.#closed;
  }

  /** True while the session holds a pool connection. */
  get connected(): boolean {
    return this.#client !== undefined;
  }

  /**
   * Run a statement, with the signature and result of node-postgres's `client.query`. The first
   * query acquires a connection and sends BEGIN; calls made concurrently run one at a time in
   * call order.
   *
   * @example
   * ```ts
   * const { rows } = await session.query<{ id: number }>('SELECT id FROM users WHERE name = $1', ['ann']);
   * ```
   */
  query<R extends QueryResultRow = QueryResultRow>(
    text: string | QueryConfig<unknown[]>,
    values?: readonly unknown[],
  ): Promise<QueryResult<R>> {
    return this.#query<R>(text, values, undefined);
  }

  /** `query`, then `done()` in the queue's turn of the statement, before anything queued after it runs. */
  #query<R extends QueryResultRow>(
    text: string | QueryConfig<unknown[]>,
    values: readonly unknown[] | undefined,
    done: (() => void) | undefined,
  ): Promise<QueryResult<R>> {
    const wait = this.#outsideBlock();
    if (wait !== undefined) return wait.then(() => this.#query<R>(text, values, done));
    if (this.#refused()) return Promise.reject(this.#sealedError());
    return this.#enqueue(() => {
      const client = this.#client;
      // Mid-transaction: send it now, there is no BEGIN to wait for.
      const sent =
        client !== undefined && this.#inTransaction && !this.#closed && this.#cut === undefined
          ? client.query<R, unknown[]>(text, values as unknown[] | undefined)
          : this.#beginWith<R>(text, values as unknown[] | undefined);
      return (
        done === undefined
          ? sent
          : sent.then((result) => {
              done();
              return result;
            })
      ).catch(this.#cancelled);
    });
  }

  /**
   * Read the rows of a SELECT in chunks of `chunkSize` through a SQL cursor (`DECLARE … CURSOR
   * WITH HOLD`, one `FETCH` per chunk on the session's queue, so other queries can run between
   * chunks). The cursor outlives the COMMIT that ends the session's context (PostgreSQL keeps the
   * rest of its rows at COMMIT; a query that fails there fails the COMMIT), so a stream returned
   * as a response body is read to its end after the request has committed: the session keeps the
   * connection until the stream ends, breaks or is destroyed, then closes the cursor and gives
   * it back. A rollback removes the cursor: the stream then fails with `SessionClosedError`.
   * Pipe it with `stream.pipeline` (or destroy it when the response closes), so that a client
   * going away mid-body gives the connection back.
   *
   * @example
   * ```ts
   * const session = await dbSession(db);
   * async function* lines() {
   *   for await (const rows of session.stream<{ text: string }>('SELECT text FROM notes', [], 500))
   *     for (const row of rows) yield `${row.text}\n`;
   * }
   * return reply.send(Readable.from(lines()));
   * ```
   */
  stream<R extends QueryResultRow = QueryResultRow>(
    text: string,
    values: readonly unknown[] | undefined,
    chunkSize: number,
  ): AsyncIterableIterator<R[]> {
    if (!Number.isInteger(chunkSize) || chunkSize < 1) {
      throw new InvalidOptionsError(`session.stream(): chunkSize must be a positive integer, got ${chunkSize}.`);
    }
    const name = `context_db_cursor_${++cursorCounter}`;
    const rows = this.#streamRows<R>(name, text, values, chunkSize);
    // Dropped unfinished (a stream piped with .pipe() to a response whose client went away):
    // the cursor is closed and the connection given back when it is collected.
    abandonedStreams.register(rows, () => void this.#closeCursor(name, false));
    return rows;
  }

  async *#streamRows<R extends QueryResultRow>(
    name: string,
    text: string,
    values: readonly unknown[] | undefined,
    chunkSize: number,
  ): AsyncGenerator<R[], undefined, undefined> {
    await this.#query(`DECLARE ${name} NO SCROLL CURSOR WITH HOLD FOR ${text}`, values, () => {
      this.#cursors ??= new Map();
      this.#cursors.set(name, this.#levels?.length ?? 1);
    });
    let failed = false;
    try {
      for (;;) {
        const { rows } = await this.#fetch<R>(name, chunkSize).catch((err: unknown) => {
          failed = true;
          throw err;
        });
        if (rows.length > 0) yield rows;
        if (rows.length < chunkSize) return undefined;
      }
    } finally {
      await this.#closeCursor(name, failed);
    }
  }

  /**
   * A FETCH runs whenever its cursor is open: inside the transaction, between transactions, after
   * the session's COMMIT (on the kept connection); it neither begins a transaction nor waits for
   * a block (reading a cursor changes nothing the block could be ending).
   */
  #fetch<R extends QueryResultRow>(name: string, count: number): Promise<QueryResult<R>> {
    return this.#enqueue(() => {
      const client = this.#client;
      if (client === undefined || this.#cut !== undefined || !this.#cursors?.has(name)) {
        return Promise.reject(
          this.#cut ??
            new SessionClosedError(
              "A stream's cursor is gone: the transaction it was declared in rolled back, or its session closed.",
            ),
        );
      }
      return client.query<R>(`FETCH FORWARD ${count} FROM ${name}`).catch(this.#cancelled);
    });
  }

  /** Close a stream's cursor if it is still open; the last one of an ended session gives the connection back. */
  #closeCursor(name: string, failed: boolean): Promise<void> {
    return this.#enqueue(async () => {
      const cursors = this.#cursors;
      const client = this.#client;
      if (cursors === undefined || !cursors.delete(name) || client === undefined) return;
      // A failed FETCH took the cursor with it (in the transaction, aborted now; outside, its
      // portal); the final reset closes whatever is left. A CLOSE refused in a transaction that
      // a statement of the consumer's aborted (25P02) leaves the outcome to the COMMIT.
      if (!failed && !this.#broken) {
        try {
          await control(client, `CLOSE ${name}`);
        } catch (err) {
          if (connectionLost(err)) this.#broken = true;
        }
      }
      if (this.#retained && cursors.size === 0) {
        this.#retained = false;
        await this.#reset(client);
        this.#releaseClient();
      }
    });
  }

  /** @internal True when the session ended with streams still open and keeps their connection. */
  get retained(): boolean {
    return this.#retained;
  }

  /**
   * @internal The response its context served is over: a stream still open now (read part-way
   * and dropped) will not be read, so its cursor is closed and the connection given back now
   * rather than when the stream is collected. A read after this fails with `SessionClosedError`.
   */
  releaseStreams(): Promise<void> {
    const names = [...(this.#cursors?.keys() ?? [])];
    return Promise.all(names.map((name) => this.#closeCursor(name, false))).then(() => undefined);
  }

  #streaming(): boolean {
    return this.#cursors !== undefined && this.#cursors.size > 0;
  }

  /** Cursors declared inside the savepoint at `levels[at]` (or deeper) went with its rollback. */
  #dropCursors(at: number): void {
    for (const [name, depth] of this.#cursors ?? []) if (depth > at) this.#cursors?.delete(name);
  }

  /**
   * The session's `pg` client with its transaction begun, for query builders and ORMs that take
   * a client. The session owns it: its `release()` does nothing, and once the session gives the
   * connection back (it closed, or its request ended) its `query` throws `SessionClosedError`, or
   * the reason the session was cut off (`ClientAbortedError`, `DeadlineExceededError`).
   * Queries sent on it directly bypass the session's queue, so await them before using
   * `session.query` again.
   *
   * @example
   * ```ts
   * const client = await session.client();
   * const cursor = client.query(new Cursor('SELECT * FROM big_table'));
   * ```
   */
  client(): Promise<PoolClient> {
    const wait = this.#outsideBlock();
    if (wait !== undefined) return wait.then(() => this.client());
    if (this.#refused()) return Promise.reject(this.#sealedError());
    return this.#enqueue(async () => {
      const client = await this.#begun();
      this.#leased ??= leasedClient(client, () => this.#leaseError(client), this.#cutReason);
      return this.#leased.client;
    });
  }

  /**
   * Commit the open transaction, if any; the connection stays with the session. Rejects with
   * `CommitFailedError` when PostgreSQL did not commit (a deferred constraint, a serialization
   * failure, or a transaction an earlier error had already aborted), and with
   * `CommitOutcomeUnknownError` when the connection was lost before PostgreSQL answered.
   *
   * @example
   * ```ts
   * await session.query('INSERT INTO audit (event) VALUES ($1)', ['login']);
   * await session.commit();
   * ```
   */
  commit(): Promise<void> {
    const wait = this.#outsideBlock();
    if (wait !== undefined) return wait.then(() => this.commit());
    if (this.#refused(true)) return Promise.reject(this.#sealedError());
    if (this.#insideSavepoint()) return Promise.reject(endsEnclosing('commit()'));
    return this.#thenHooks(
      this.#enqueue(() => {
        this.#assertOpen();
        return this.#commitNow(false);
      }),
    );
  }

  /**
   * Roll back the open transaction, if any; the connection stays with the session. Does not
   * reject for a closed session nor for a lost connection: PostgreSQL rolls back a transaction
   * whose connection died, so the connection is discarded and the next query takes a fresh one.
   * Once the session's context is finishing, the context decides the outcome: this rejects with
   * `SessionClosedError` rather than pretend to undo work the finish may commit.
   *
   * @example
   * ```ts
   * await session.query('DELETE FROM carts WHERE user_id = $1', [id]);
   * if (!confirmed) await session.rollback();
   * ```
   */
  rollback(): Promise<void> {
    const wait = this.#outsideBlock();
    if (wait !== undefined) return wait.then(() => this.rollback());
    if (this.#refused(true)) return Promise.reject(this.#sealedError());
    if (this.#insideSavepoint()) return Promise.reject(endsEnclosing('rollback()'));
    return this.#thenHooks(this.#enqueue(() => this.#rollbackNow(false)));
  }

  /**
   * Set the options of the transactions this session opens from now on (over its database's
   * `transaction` defaults). Throws `TransactionAlreadyOpenError` while a transaction is open or
   * about to begin: PostgreSQL fixes isolation and access mode at BEGIN.
   *
   * @example
   * ```ts
   * session.setTransactionOptions({ isolationLevel: 'repeatable read', readOnly: true });
   * const { rows } = await session.query('SELECT count(*) FROM orders');
   * ```
   */
  setTransactionOptions(options: TransactionOptions | undefined): void {
    const valid = options === undefined ? undefined : validateTransactionOptions(options, 'setTransactionOptions()');
    if (this.#inTransaction || this.#pending > 0) throw optionsTooLate();
    this.#options = mergeTransactionOptions(this.#driver.defaults, valid);
  }

  /**
   * Run `fn` after the COMMIT that makes the work done so far durable: the session's next
   * commit, or, inside a nested atomic block, the commit of the transaction that block is part
   * of. Dropped if that work is rolled back instead. Hooks run in registration order and are
   * awaited; one that throws is reported (see the adapters' logging) and changes no outcome.
   *
   * @example
   * ```ts
   * await session.query('INSERT INTO orders (id) VALUES ($1)', [id]);
   * session.onCommit(() => mailer.send(orderConfirmation(id)));
   * ```
   */
  onCommit(fn: TransactionHook): void {
    this.#level(fn, 'onCommit').onCommit.push({ fn, order: ++hookCounter });
  }

  /**
   * Run `fn` after the work done so far is rolled back (a rollback, a failed commit, a nested
   * block that threw); dropped once it commits.
   *
   * @example
   * ```ts
   * session.onRollback(() => metrics.increment('orders.rolled_back'));
   * ```
   */
  onRollback(fn: TransactionHook): void {
    this.#level(fn, 'onRollback').onRollback.push({ fn, order: ++hookCounter });
  }

  /** The transaction level a hook registered by the caller belongs to: its innermost block's. */
  #level(fn: unknown, what: string): Level {
    if (typeof fn !== 'function') throw new InvalidOptionsError(`${what}(fn) needs a function, got ${typeof fn}.`);
    if (this.#closed || this.#refused()) throw this.#sealedError();
    const levels = this.#openLevels();
    const mine = blocks.getStore();
    for (let at = levels.length - 1; at > 0; at--) {
      const level = levels[at] as Level;
      if (level.token === undefined || mine?.has(level.token)) return level;
    }
    return levels[0] as Level;
  }

  /**
   * @internal Run the hooks whose transaction level has ended, in order; each failure goes to
   * `hookErrors`. Never rejects.
   */
  runHooks(): Promise<void> {
    return this.#due === undefined || this.#due.length === 0 ? DONE : this.#runDue();
  }

  async #runDue(): Promise<void> {
    const due = this.#due;
    for (let hook = due?.shift(); hook !== undefined; hook = due?.shift()) {
      try {
        await hook.fn();
      } catch (err) {
        try {
          this.hookErrors(err, hook.kind);
        } catch (failed) {
          // A logger that throws must neither undo the outcome nor lose the hook's failure.
          reportHookError(err, hook.kind);
          reportHookError(failed, `${hook.kind} hook's error reporter`);
        }
      }
    }
  }

  #thenHooks(done: Promise<void>): Promise<void> {
    return done.then(
      () => this.runHooks(),
      (err: unknown) =>
        this.runHooks().then(() => {
          throw err;
        }),
    );
  }

  /** The transaction ended: its hooks (and those of savepoints still open in it) fall due or go. */
  #transactionEnded(committed: boolean | undefined): void {
    const cursors = this.#cursors;
    // Committed, a cursor WITH HOLD outlives its transaction; rolled back, it is gone with it.
    if (cursors !== undefined)
      for (const [name, depth] of cursors) {
        if (committed === true) cursors.set(name, 0);
        else if (depth > 0) cursors.delete(name);
      }
    const levels = this.#levels;
    if (levels === undefined) return;
    this.#levels = undefined;
    if (committed !== undefined) this.#schedule(levels, committed);
  }

  #schedule(levels: readonly Level[], committed: boolean): void {
    this.#due ??= [];
    const due = this.#due;
    const kind = committed ? 'onCommit' : 'onRollback';
    const hooks = levels.flatMap((level) => level[kind]);
    if (levels.length > 1) hooks.sort((a, b) => a.order - b.order);
    for (const { fn } of hooks) due.push({ kind, fn });
  }

  /** Released savepoints' hooks go to the enclosing level, kept in registration order. */
  #mergeInto(parent: Level, ended: readonly Level[]): void {
    for (const level of ended) {
      parent.onCommit.push(...level.onCommit);
      parent.onRollback.push(...level.onRollback);
    }
    parent.onCommit.sort((a, b) => a.order - b.order);
    parent.onRollback.sort((a, b) => a.order - b.order);
  }

  #openLevels(): Level[] {
    this.#levels ??= [newLevel(undefined, undefined)];
    return this.#levels;
  }

  /** True while the caller runs inside a nested block's savepoint, where commit() would end the outer transaction. */
  #insideSavepoint(): boolean {
    const levels = this.#levels;
    return levels !== undefined && levels.length > 1;
  }

  /**
   * Roll back whatever is uncommitted, give the connection back to the pool and mark the session
   * closed; later use throws `SessionClosedError`. Safe to call twice; never rejects. Once the
   * session's context is finishing, the context closes it: this does nothing.
   *
   * @example
   * ```ts
   * const session = await db.createSession();
   * try { await session.query('SELECT 1'); } finally { await session.close(); }
   * ```
   */
  close(): Promise<void> {
    // A controlled transaction's hold is not waited for: closing rolls its work back with the rest.
    const block = this.#blocking();
    if (block?.scoped) return block.ended.then(() => this.close());
    if (this.#sealed) return DONE;
    return this.end(false).then(() => this.runHooks());
  }

  /** `await using session = await db.createSession()` closes the session at the end of scope. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * @internal For the owning context: refuse new work from now on (it fails with
   * `SessionClosedError`); work already queued still runs, ahead of the context's `end()`.
   */
  seal(): void {
    this.#sealed = true;
  }

  /**
   * @internal Run `fn` (an atomic block) with the session to itself: work on the session from
   * outside `fn` waits until it ends, so that neither a concurrent block nor a stray commit or
   * rollback can end its transaction half-way. Blocks queue behind each other; a block begun
   * before the session's context started finishing runs to its end.
   */
  async exclusive<R>(fn: (enclosed: boolean) => Promise<R>, nests = false): Promise<R> {
    const mine = blocks.getStore();
    // Wait for blocks the caller is not inside; once the holder is one it is inside (the block a
    // sibling nested block ran in, now back), nest in it.
    for (let wait = this.#turn(mine); wait !== undefined; wait = this.#turn(mine)) await wait;
    const holder = this.#block;
    if (holder !== undefined) {
      if (holder.atomic && !nests) throw new NestedAtomicBlockError();
      // A nested block inside an atomic one, or a block inside a finishing context's beforeCommit.
      const atomic = holder.atomic;
      return this.#hold(() => fn(atomic), true);
    }
    if (this.#sealed) throw this.#sealedError();
    return this.#hold(() => fn(false), true);
  }

  /**
   * @internal `exclusive` without a callback, for a query builder's transaction begun and ended
   * by separate calls. `scoped`: call it synchronously, before any await, in the async function
   * whose continuation runs the transaction's work (Kysely's driver `beginTransaction`): it enters
   * the hold there (`AsyncLocalStorage.enterWith`), so that continuation and what it starts are
   * inside, while code beside it is not, and waits for `end()`. Not scoped (a controlled
   * transaction, whose work runs in its caller's own context): only `run()` is inside, and work
   * from outside is refused with `TransactionAlreadyOpenError` instead of waiting.
   */
  hold(scoped: boolean): SessionHold {
    const mine = blocks.getStore();
    const token = {};
    const inside: ReadonlySet<object> = new Set(mine).add(token);
    if (scoped) blocks.enterWith(inside);
    let block: Block | undefined;
    let ended = false;
    const ready = (async () => {
      for (let wait = this.#turn(mine); wait !== undefined; wait = this.#turn(mine)) await wait;
      if (this.#block === undefined && this.#sealed) throw this.#sealedError();
      if (!ended) block = this.#push(true, scoped, token);
    })();
    return {
      token,
      ready,
      run: (fn) => {
        // Added to the caller's blocks, not in place of them: a nested atomic block inside the
        // transaction still holds the session when the transaction's own queries run in it.
        const current = blocks.getStore();
        return current?.has(token) ? fn() : blocks.run(new Set(current).add(token), fn);
      },
      end: () => {
        ended = true;
        block?.end();
      },
    };
  }

  /**
   * What a caller inside `mine` must wait for before holding the session itself: the end of a
   * block it is not inside; undefined when there is none. Checked again after each wait, with no
   * await between the last check and taking the hold.
   */
  #turn(mine: ReadonlySet<object> | undefined): Promise<void> | undefined {
    const other = this.#blocking(mine);
    if (other === undefined || other.scoped) return other?.ended;
    return Promise.reject(this.#sealed ? this.#sealedError() : heldElsewhere());
  }

  /**
   * The outermost of the blocks holding the session that the caller is not inside (they nest
   * inside the innermost block the caller is in); undefined when the caller may use the session.
   */
  #blocking(mine = blocks.getStore()): Block | undefined {
    let outside: Block | undefined;
    for (let block = this.#block; block !== undefined && !mine?.has(block.token); block = block.outer) outside = block;
    return outside;
  }

  #push(atomic: boolean, scoped: boolean, token: object = {}): Block {
    let resolve!: () => void;
    const ended = new Promise<void>((r) => {
      resolve = r;
    });
    let done = false;
    const block: Block = {
      token,
      atomic,
      scoped,
      outer: this.#block,
      ended,
      end: () => {
        if (done) return;
        done = true;
        this.#pop(block);
        resolve();
      },
    };
    this.#block = block;
    return block;
  }

  #pop(block: Block): void {
    if (this.#block === block) {
      this.#block = block.outer;
      return;
    }
    // Ended before a block nested in it (one its code did not await): that one now nests in its outer.
    for (let inner = this.#block; inner !== undefined; inner = inner.outer) {
      if (inner.outer === block) {
        inner.outer = block.outer;
        return;
      }
    }
  }

  /**
   * @internal Inside a block holding the session: transactions it begins take `options` over the
   * session's own, until `fn` ends. Throws `TransactionAlreadyOpenError` when one is already open.
   */
  async withOptions<R>(options: TransactionOptions | undefined, fn: () => Promise<R>): Promise<R> {
    if (options === undefined) return fn();
    if (this.#inTransaction) throw optionsTooLate();
    const outer = this.#blockOptions;
    this.#blockOptions = options;
    try {
      return await fn();
    } finally {
      this.#blockOptions = outer;
    }
  }

  /**
   * @internal Run `fn` inside a SAVEPOINT of the open transaction (beginning one if none is open
   * yet): released when `fn` returns, rolled back alone when it throws, so the transaction goes
   * on either way. Call it from a block holding the session (`exclusive`), whose hooks then
   * belong to the savepoint.
   */
  async savepoint<R>(fn: () => Promise<R> | R): Promise<R> {
    const name = await this.beginSavepoint(this.#block?.token);
    let result: R;
    try {
      result = await fn();
    } catch (err) {
      await this.endSavepoint(name, false);
      throw err;
    }
    await this.endSavepoint(name, true);
    return result;
  }

  /**
   * @internal For query builders whose transactions are begun and ended by separate calls: open a
   * SAVEPOINT (beginning the transaction if none is open) and return its name for
   * `endSavepoint`. Hooks registered until it ends belong to it, unless `token` names the block
   * they must come from.
   */
  beginSavepoint(token?: object): Promise<string> {
    const wait = this.#outsideBlock();
    if (wait !== undefined) return wait.then(() => this.beginSavepoint(token));
    if (this.#refused()) return Promise.reject(this.#sealedError());
    const name = `context_db_nested_${++savepointCounter}`;
    return this.#enqueue(async () => {
      const client = await this.#begun();
      await control(client, `SAVEPOINT ${name}`);
      this.#openLevels().push(newLevel(name, token));
      return name;
    });
  }

  /**
   * @internal Release (`release` true) or roll back the savepoint `name` and every one opened
   * inside it, then run the hooks that fell due. Rejects with `CommitFailedError` when a release
   * found the transaction aborted by a failed statement (the savepoint is rolled back then).
   */
  endSavepoint(name: string, release: boolean): Promise<void> {
    const wait = this.#outsideBlock();
    if (wait !== undefined) return wait.then(() => this.endSavepoint(name, release));
    const ended = this.#enqueue(() => this.#endSavepoint(name, release));
    return release ? this.#thenHooks(ended) : ended.then(() => this.runHooks());
  }

  async #endSavepoint(name: string, release: boolean): Promise<void> {
    const levels = this.#levels;
    const at = levels?.findIndex((level) => level.savepoint === name) ?? -1;
    // Cut off: the session's end rolls the whole transaction back, savepoints and hooks included.
    if (this.#cut !== undefined) {
      if (release) throw this.#cut;
      return;
    }
    if (levels === undefined || at === -1 || !this.#inTransaction) {
      // The transaction ended under the block (the session was closed): its work is gone.
      if (release) throw new SessionClosedError('The session was closed inside a nested atomic block.');
      return;
    }
    const client = this.#client as PoolClient;
    const ended = levels.splice(at);
    const parent = levels[at - 1] as Level;
    if (release) {
      try {
        await control(client, `RELEASE SAVEPOINT ${name}`);
        this.#mergeInto(parent, ended);
        return;
      } catch (err) {
        if (connectionLost(err)) {
          // The transaction is gone with the connection: its end (a failed commit, a rollback)
          // decides the hooks, and the session is out of the block, free to roll back.
          this.#broken = true;
          this.#mergeInto(parent, ended);
          throw err;
        }
        // A statement in the block failed and the block went on: its work cannot be kept.
        await this.#send(client, `ROLLBACK TO SAVEPOINT ${name}; RELEASE SAVEPOINT ${name}`, false);
        this.#schedule(ended, false);
        this.#dropCursors(at);
        throw new CommitFailedError({
          cause: err,
          reason: 'a statement in the nested block failed, so it was rolled back',
        });
      }
    }
    if (!this.#broken) await this.#send(client, `ROLLBACK TO SAVEPOINT ${name}; RELEASE SAVEPOINT ${name}`, false);
    this.#abortedBy = undefined; // what failed in the block is undone with it
    this.#schedule(ended, false);
    this.#dropCursors(at);
  }

  /**
   * @internal For the finishing context: run a `beforeCommit` callback as the session's only
   * user, so that it can still query while late work from the request (a stray rollback, a
   * query) waits and is then refused.
   */
  async runBeforeCommit(fn: () => void | Promise<void>): Promise<void> {
    for (let wait = this.#outsideBlock(); wait !== undefined; wait = this.#outsideBlock()) await wait;
    await this.#hold(fn, false);
  }

  async #hold<R>(fn: () => R | Promise<R>, atomic: boolean): Promise<R> {
    // A token per block, not the session: a callback a finished block left behind must not pass
    // for work of the next block.
    const block = this.#push(atomic, true);
    try {
      return await blocks.run(new Set(blocks.getStore()).add(block.token), fn);
    } finally {
      block.end();
    }
  }

  /** @internal Resolves once the work queued so far (and any atomic block under way) has settled. */
  drain(): Promise<void> {
    const wait = this.#outsideBlock();
    if (wait !== undefined) return wait.then(() => this.drain());
    return this.#pending === 0 ? DONE : this.#enqueue(() => DONE);
  }

  /**
   * When a block holds the session and the caller is not inside it: the block's end, or, for a
   * controlled hold, a rejection (it cannot be waited for). Once the context is finishing, a
   * controlled hold still open is abandoned: the context's commit fails and rolls back.
   */
  #outsideBlock(): Promise<void> | undefined {
    const block = this.#blocking();
    if (block === undefined || block.scoped) return block?.ended;
    if (!this.#sealed) return Promise.reject(heldElsewhere());
    this.#abandoned ??= abandonedError();
    block.end();
    return this.#outsideBlock();
  }

  /**
   * New work is refused once the context is finishing, except inside an atomic block begun
   * before (it runs to its end) and queries of a `beforeCommit`, which may not end the
   * transaction the finish is about to commit.
   */
  #refused(ending = false): boolean {
    if (!this.#sealed) return false;
    const block = this.#block;
    return block === undefined || (ending && !block.atomic);
  }

  // A handed-out client bypasses the queue, so it is refused whenever the session's own work
  // would be, and outside a transaction, where its query would commit on its own.
  #leaseError(client: PoolClient): Error | undefined {
    // Cut off (abort, deadline): the reason, as session.query gives it, even once the cut has
    // rolled back and released the connection.
    if (this.#cut !== undefined) return this.#cut;
    if (this.#client !== client) {
      return new SessionClosedError('A client from session.client() was used after its session released it.');
    }
    // Finishing: only from inside the block that holds the session (an atomic block begun before,
    // a beforeCommit), never from the request's late code.
    if (this.#sealed && (this.#block === undefined || this.#blocking() !== undefined)) return this.#sealedError();
    if (!this.#inTransaction) {
      return new SessionClosedError(
        'A client from session.client() was used with no transaction open (after a commit or rollback): ' +
          'call session.client() again to begin one.',
      );
    }
    return undefined;
  }

  /**
   * @internal For the owning context, before committing several sessions: check deferred
   * constraints now (`SET CONSTRAINTS ALL IMMEDIATE`), so that the usual COMMIT failure surfaces
   * while every session can still roll back.
   */
  checkDeferred(): Promise<void> {
    const wait = this.#outsideBlock();
    if (wait !== undefined) return wait.then(() => this.checkDeferred());
    return this.#enqueue(async () => {
      const client = this.#client;
      if (client === undefined || !this.#inTransaction || this.#closed) return;
      try {
        await control(client, this.#driver.checkSql);
      } catch (err) {
        throw new CommitFailedError({ cause: err });
      }
    });
  }

  /**
   * @internal End the session after its queued work: commit (`commit` true) or roll back, reset
   * the connection's session state in the same round trip, release it and mark the session
   * closed. Rejects only when it meant to commit and could not; the connection is released then
   * too.
   */
  end(commit: boolean): Promise<void> {
    this.#sealed = true;
    if (this.#ending !== undefined)
      return commit && this.#cut !== undefined ? this.#failCut(this.#ending) : this.#ending;
    // A commit lets an atomic block under way finish first; a rollback cuts it off.
    const wait = commit ? this.#outsideBlock() : undefined;
    if (wait !== undefined) return wait.then(() => this.end(true));
    const abandoned = commit ? this.#abandoned : undefined;
    if (abandoned !== undefined) {
      return this.end(false).then(() => {
        throw abandoned;
      });
    }
    // Nothing queued and nothing sent on the connection since its last reset: release now.
    if (this.#pending === 0 && !this.#inTransaction && !this.#dirty && !this.#streaming()) {
      this.#transactionEnded(commit);
      this.#closed = true;
      this.#releaseClient();
      this.#ending = DONE;
      return DONE;
    }
    this.#ending = this.#enqueue(async () => {
      this.#closed = true;
      try {
        // Streams still open keep the connection: no reset (it would close their cursors) until
        // the last one closes.
        if (commit) {
          await this.#commitNow(!this.#streaming());
          this.#retained = this.#streaming() && !this.#broken;
        } else await this.#rollbackNow(true);
      } finally {
        if (!this.#retained) this.#releaseClient();
      }
    });
    return this.#ending;
  }

  /**
   * @internal For a context that is aborted (the client went away, a deadline passed): end the
   * session now instead of after its work. The statement running on its connection is cancelled
   * (PostgreSQL's cancel request) and its caller gets `reason`; work queued behind it is refused
   * with `reason`; a wait queued behind a full pool fails now (the connection, when the pool
   * hands it over, goes straight back), one already on its way is given back unused; then the transaction is rolled back (its `onRollback` hooks, savepoints' included,
   * fall due) and the connection released. Resolves when it is.
   */
  cancel(reason: Error): Promise<void> {
    this.#sealed = true;
    if (this.#ending !== undefined) return this.#ending;
    this.#cut = reason;
    // Waiting for the pool: fail that wait now rather than when a connection frees.
    if (this.#acquiring !== undefined) this.#driver.withdraw?.(this.#acquiring, reason);
    const client = this.#client;
    // Nothing can be running on the connection: neither the session's work nor a leased client's.
    if (client === undefined || (this.#pending === 0 && this.#leased === undefined)) return this.end(false);
    const cancelling = cancelBackend(client);
    this.#ending = this.#enqueue(() => this.#rollbackAfter(cancelling));
    return this.#ending;
  }

  async #rollbackAfter(cancelling: Promise<CancelOutcome>): Promise<void> {
    this.#closed = true;
    try {
      // A cancel request still on its way would hit the ROLLBACK, or the next session's statement
      // once the connection is back in the pool: send nothing before it has landed, and when
      // nobody can tell whether it will, do not reuse the connection.
      if ((await cancelling) === 'unknown') this.#broken = true;
      await this.#rollbackNow(true);
    } finally {
      this.#releaseClient();
    }
  }

  #failCut(ending: Promise<void>): Promise<void> {
    const reason = this.#cut as Error;
    return ending.then(() => {
      throw reason;
    });
  }

  #enqueue<T>(op: () => Promise<T>): Promise<T> {
    const idle = this.#pending === 0;
    this.#pending++;
    // Idle: start now instead of a tick later behind a settled tail (same order, one promise less).
    const result = idle ? start(op) : this.#tail.then(op);
    this.#tail = result.then(this.#settled, this.#settled);
    return result;
  }

  readonly #settled = (): void => {
    this.#pending--;
  };

  #assertOpen(): void {
    if (this.#cut !== undefined) throw this.#cut;
    if (this.#closed) throw new SessionClosedError('This session is closed.');
  }

  /** What work refused after the context began finishing fails with: why it was cut off, if it was. */
  #sealedError(): Error {
    return this.#cut ?? sealedError();
  }

  async #begun(): Promise<PoolClient> {
    const client = await this.#connected();
    if (!this.#inTransaction) {
      const options = this.#beginning();
      await control(client, this.#driver.beginSql(options));
      this.#begunWith(options);
    }
    return client;
  }

  /**
   * Begin the transaction if none is open and run the session's query, BEGIN and query written
   * in one flight when the client can pipeline (node-postgres 8.23's `pipeline` mode, switched on
   * for these two only): one round trip instead of two. A failed BEGIN is the query's error and
   * leaves no transaction open; a failed query leaves the transaction open and aborted, as it
   * would after a BEGIN of its own.
   */
  async #beginWith<R extends QueryResultRow>(
    text: string | QueryConfig<unknown[]>,
    values: unknown[] | undefined,
  ): Promise<QueryResult<R>> {
    const client = await this.#connected();
    if (this.#inTransaction || !pipelines(client, text)) {
      await this.#begun();
      return client.query<R, unknown[]>(text, values);
    }
    const options = this.#beginning();
    const mode = client as { pipeline: boolean };
    const was = mode.pipeline;
    mode.pipeline = true;
    const [begin, first] = corked(client, () => [
      client.query(this.#driver.beginSql(options)),
      client.query<R, unknown[]>(text, values),
    ]);
    // The first query may fail before BEGIN is answered (pg refuses a value it cannot write):
    // observed now, reported below, never an unhandled rejection that ends the process.
    first.catch(() => undefined);
    // Back to the pool's mode once both are answered (pipeline mode also refuses cursors).
    const restore = (): void => {
      mode.pipeline = was;
    };
    try {
      await begin;
    } catch (err) {
      // Without its BEGIN the query ran on its own, if at all; it is answered, then reported.
      await first.then(restore, restore);
      throw err;
    }
    this.#begunWith(options);
    try {
      return await first;
    } finally {
      restore();
    }
  }

  /** Before a BEGIN: the options it opens the transaction with. */
  #beginning(): TransactionOptions | undefined {
    this.#dirty = this.#driver.resetSql !== '';
    return mergeTransactionOptions(this.#options, this.#blockOptions);
  }

  #begunWith(options: TransactionOptions | undefined): void {
    this.#abortedBy = undefined;
    this.#current = options;
    this.#inTransaction = true;
  }

  /** The session's connection, acquired on first use (or again, after it broke between transactions). */
  async #connected(): Promise<PoolClient> {
    this.#assertOpen();
    let client = this.#client;
    // Between transactions, a connection that died (nothing is lost), or one from a host the
    // database moved away from (after a failover, the old primary): take a fresh one.
    if (client !== undefined && !this.#inTransaction && (this.#broken || this.#host !== this.#driver.host)) {
      this.#releaseClient();
      client = undefined;
    }
    if (client === undefined) {
      // Read before the wait: a changeHost during it moves the wait to the new pool, and a
      // connection judged older than it is only costs a needless move.
      this.#host = this.#driver.host;
      const acquiring = this.#driver.acquire();
      this.#acquiring = acquiring;
      try {
        client = await acquiring;
      } finally {
        this.#acquiring = undefined;
      }
      client.on('error', this.#onClientError);
      this.#client = client;
      this.#broken = false;
      // Cut off while waiting for the pool: run nothing; the session's end releases it at once.
      if (this.#cut !== undefined) throw this.#cut;
    }
    return client;
  }

  /** The final statement of a session carries the reset in the same simple-query flight. */
  #withReset(sql: string, final: boolean): string {
    const reset = this.#driver.resetSql;
    return final && reset !== '' ? `${sql}; ${reset}` : sql;
  }

  async #commitNow(final: boolean): Promise<void> {
    const client = this.#client;
    if (client === undefined || !this.#inTransaction) {
      // Nothing to commit: what was done before the hooks is as durable as it gets.
      this.#transactionEnded(true);
      if (client !== undefined && final) await this.#reset(client);
      return;
    }
    this.#inTransaction = false;
    const options = this.#current;
    if (this.#broken) {
      // Known before sending anything: the server dropped the transaction with the connection.
      this.#transactionEnded(false);
      throw new CommitFailedError({ reason: 'the connection to the database was lost before COMMIT' });
    }
    if (this.#leasedBusy(client)) {
      this.#transactionEnded(false);
      throw new CommitFailedError({
        reason:
          'a query sent on session.client() was still running (a cursor left open?), so the COMMIT could not be ' +
          'sent after it; the connection was closed, which rolled the transaction back. Close cursors before the end.',
      });
    }
    const commit = this.#driver.commitSql(options);
    const reset = this.#driver.resetSql;
    let tag: string | undefined;
    let resetFailed = false;
    try {
      if (final && reset !== '') ({ tag, resetFailed } = await endWithReset(client, commit, reset));
      else tag = await control(client, commit);
    } catch (err) {
      if (connectionLost(err)) {
        this.#broken = true;
        this.#transactionEnded(undefined); // committed or not, nobody knows: neither kind runs
        throw new CommitOutcomeUnknownError({ cause: err });
      }
      // The transaction is gone (or, under a savepoint, must be rolled back); reset, then report.
      await this.#send(client, this.#withReset(this.#driver.rollbackSql(options), final), final);
      this.#transactionEnded(false);
      throw new CommitFailedError({ cause: err });
    }
    // Ended, but the connection keeps what the reset did not clear: it is closed, not reused.
    if (resetFailed) this.#broken = true;
    else if (final) this.#dirty = false;
    // PostgreSQL answers COMMIT of an aborted transaction with ROLLBACK and no error.
    const committed = tag !== 'ROLLBACK';
    this.#transactionEnded(committed);
    if (!committed) {
      throw new CommitFailedError({
        cause: this.#abortedBy,
        reason: 'an earlier statement failed and aborted the transaction, so PostgreSQL rolled it back',
      });
    }
  }

  async #rollbackNow(final: boolean): Promise<void> {
    this.#transactionEnded(false);
    const client = this.#client;
    if (client === undefined) return;
    this.#leasedBusy(client);
    if (!this.#inTransaction) {
      if (final) await this.#reset(client);
      return;
    }
    this.#inTransaction = false;
    // A lost connection took the transaction with it; otherwise roll back (and reset if final).
    if (!this.#broken) {
      await this.#send(client, this.#withReset(this.#driver.rollbackSql(this.#current), final), final);
    }
    if (this.#broken && !final) this.#releaseClient();
  }

  /**
   * Run in the session's queue, where its own work has settled: what still runs on the connection
   * is a leased client's. A portal left open (a cursor read part-way) ignores a cancel and would
   * hold a COMMIT or ROLLBACK queued behind it forever; the connection is marked broken, so that
   * it is closed instead, which rolls the transaction back on the server at once.
   */
  #leasedBusy(client: PoolClient): boolean {
    if (this.#leased === undefined || !busy(client)) return false;
    this.#broken = true;
    return true;
  }

  async #reset(client: PoolClient): Promise<void> {
    if (!this.#dirty || this.#broken || this.#driver.resetSql === '') return;
    await this.#send(client, this.#driver.resetSql, true);
  }

  /** Send a cleanup statement; a failure means the connection cannot be trusted again. */
  async #send(client: PoolClient, sql: string, resets: boolean): Promise<void> {
    try {
      await control(client, sql);
      if (resets) this.#dirty = false;
    } catch {
      this.#broken = true;
    }
  }

  #releaseClient(): void {
    const client = this.#client;
    if (client === undefined) return;
    this.#client = undefined;
    this.#cursors = undefined;
    this.#retained = false;
    this.#leased?.revoke();
    this.#leased = undefined;
    client.off('error', this.#onClientError);
    // A connection that may still carry session state or a transaction is not given to anyone.
    const unclean = this.#broken || this.#inTransaction || (this.#dirty && this.#driver.resetSql !== '');
    this.#inTransaction = false;
    this.#dirty = false;
    this.#driver.release(client, unclean);
  }
}
