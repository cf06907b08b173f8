import type { PoolClient, QueryConfig, QueryResult, QueryResultRow } from 'pg';
import { CommitFailedError, SessionClosedError } from './errors.js';

/**
 * Where a session gets its connection and which statements open and end its transactions. The
 * pool driver (`DbConnect.createSession`) opens real transactions; the testing helpers use a
 * savepoint driver on a connection that a test already holds.
 */
export interface SessionDriver {
  acquire(): Promise<PoolClient>;
  /** Give the connection back; `destroy` when it may be unusable or mid-transaction. */
  release(client: PoolClient, destroy: boolean): void;
  readonly beginSql: string;
  readonly commitSql: string;
  readonly rollbackSql: string;
}

const DONE: Promise<void> = Promise.resolve();

function start<T>(op: () => Promise<T>): Promise<T> {
  try {
    return op();
  } catch (err) {
    return Promise.reject(err);
  }
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
  #inTransaction = false;
  #closed = false;
  #broken = false;
  // node-postgres deprecates overlapping client.query() calls, so the session keeps its own
  // queue: every operation starts after the previous one settled, in call order. That is also
  // what makes two concurrent first queries share one connection.
  #tail: Promise<void> = DONE;
  /** Operations enqueued and not yet settled. */
  #pending = 0;

  readonly #onClientError = (): void => {
    // A checked-out pg client that loses its backend emits 'error'; unhandled, that would crash
    // the process. The pending query rejects on its own; we only remember not to reuse it.
    this.#broken = true;
  };

  /** @internal Sessions are made by `DbConnect.createSession()` and `dbSession()`. */
  constructor(driver: SessionDriver) {
    this.#driver = driver;
  }

  /** True while a transaction is open on this session's connection. */
  get inTransaction(): boolean {
    return this.#inTransaction;
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
    return this.#enqueue(() => {
      const client = this.#client;
      // Mid-transaction: send it now, there is no BEGIN to wait for.
      if (client !== undefined && this.#inTransaction && !this.#closed) {
        return client.query<R, unknown[]>(text, values as unknown[] | undefined);
      }
      return this.#begun().then((begun) => begun.query<R, unknown[]>(text, values as unknown[] | undefined));
    });
  }

  /**
   * The session's `pg` client with its transaction begun, for query builders and ORMs that take
   * a client. Do not release it: the session owns it. Queries sent on it directly bypass the
   * session's queue, so await them before using `session.query` again.
   *
   * @example
   * ```ts
   * const client = await session.client();
   * const cursor = client.query(new Cursor('SELECT * FROM big_table'));
   * ```
   */
  client(): Promise<PoolClient> {
    return this.#enqueue(() => this.#begun());
  }

  /**
   * Commit the open transaction, if any; the connection stays with the session. Rejects with
   * `CommitFailedError` when PostgreSQL did not commit (a deferred constraint, a serialization
   * failure, or a transaction an earlier error had already aborted).
   *
   * @example
   * ```ts
   * await session.query('INSERT INTO audit (event) VALUES ($1)', ['login']);
   * await session.commit();
   * ```
   */
  commit(): Promise<void> {
    return this.#enqueue(async () => {
      this.#assertOpen();
      const client = this.#client;
      if (client === undefined || !this.#inTransaction) return;
      this.#inTransaction = false;
      let command: string;
      try {
        ({ command } = await client.query(this.#driver.commitSql));
      } catch (err) {
        throw new CommitFailedError(err instanceof Error ? err.message : String(err), {
          cause: err,
        });
      }
      // PostgreSQL answers COMMIT of an aborted transaction with ROLLBACK and no error.
      if (command === 'ROLLBACK') {
        throw new CommitFailedError(
          'an earlier statement failed and aborted the transaction, so PostgreSQL rolled it back',
        );
      }
    });
  }

  /**
   * Roll back the open transaction, if any; the connection stays with the session. Never
   * rejects, not for a closed session nor for a lost connection: PostgreSQL rolls back a transaction whose connection died, so
   * the connection is discarded and the next query takes a fresh one.
   *
   * @example
   * ```ts
   * await session.query('DELETE FROM carts WHERE user_id = $1', [id]);
   * if (!confirmed) await session.rollback();
   * ```
   */
  rollback(): Promise<void> {
    // On a closed session there is nothing left to roll back: close() already did.
    return this.#enqueue(() => this.#rollbackNow());
  }

  /**
   * Roll back whatever is uncommitted, give the connection back to the pool and mark the session
   * closed; later use throws `SessionClosedError`. Safe to call twice; never rejects.
   *
   * @example
   * ```ts
   * const session = await db.createSession();
   * try { await session.query('SELECT 1'); } finally { await session.close(); }
   * ```
   */
  close(): Promise<void> {
    // Nothing queued and no transaction to roll back: release now.
    if (this.#pending === 0 && !this.#inTransaction) {
      if (!this.#closed) {
        this.#closed = true;
        this.#releaseClient(false);
      }
      return DONE;
    }
    return this.#enqueue(async () => {
      if (this.#closed) return;
      this.#closed = true;
      await this.#rollbackNow();
      this.#releaseClient(false);
    });
  }

  /** `await using session = await db.createSession()` closes the session at the end of scope. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
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
    if (this.#closed) throw new SessionClosedError('This session is closed.');
  }

  async #begun(): Promise<PoolClient> {
    this.#assertOpen();
    let client = this.#client;
    if (client === undefined) {
      client = await this.#driver.acquire();
      client.on('error', this.#onClientError);
      this.#client = client;
      this.#broken = false;
    }
    if (!this.#inTransaction) {
      await client.query(this.#driver.beginSql);
      this.#inTransaction = true;
    }
    return client;
  }

  async #rollbackNow(): Promise<void> {
    const client = this.#client;
    if (client === undefined || !this.#inTransaction) return;
    this.#inTransaction = false;
    if (!this.#broken) {
      try {
        await client.query(this.#driver.rollbackSql);
        return;
      } catch {
        // The connection is gone or unusable; PostgreSQL has dropped the transaction with it.
      }
    }
    this.#releaseClient(true);
  }

  #releaseClient(destroy: boolean): void {
    const client = this.#client;
    if (client === undefined) return;
    this.#client = undefined;
    client.off('error', this.#onClientError);
    this.#driver.release(client, destroy || this.#broken);
  }
}
