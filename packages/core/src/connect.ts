import { AsyncResource } from 'node:async_hooks';
import type { Pool, PoolClient, PoolConfig } from 'pg';
import pg from 'pg';
import { DatabaseUnavailableError, DbConnectClosedError, InvalidOptionsError } from './errors.js';
import { DbSession, type SessionDriver } from './session.js';
import { beginStatement, type TransactionOptions, validateTransactionOptions } from './transaction.js';

/** Builds the pool for a host; called lazily on first use and again after `changeHost()`. */
export type CreatePool = (host: string | undefined) => Pool;

/** Awaited before each new session is created, e.g. to pick the current primary with `changeHost`. */
export type BeforeCreateSession = (db: DbConnect) => void | Promise<void>;

/** Options of `new DbConnect()`: either `createPool`, or `connectionString` and/or `poolConfig`. */
export interface DbConnectOptions {
  /** Builds the `pg.Pool` for a host. Use it for full control over the pool. */
  readonly createPool?: CreatePool;
  /** Shorthand for a default pool: `postgres://user@host:5432/db`. */
  readonly connectionString?: string | undefined;
  /** Shorthand for a default pool: any `pg.PoolConfig` (merged under `connectionString`). */
  readonly poolConfig?: PoolConfig | undefined;
  /** Passed to `createPool`; with the shorthand it replaces the server host (and port, as `host:port`). */
  readonly host?: string | undefined;
  readonly beforeCreateSession?: BeforeCreateSession;
  /**
   * Called when an idle pooled connection fails (the server restarted, a backend was killed).
   * pg emits these on the pool, where an unhandled one would crash the process.
   * Default: a one-line warning on stderr.
   */
  readonly onPoolError?: (err: Error) => void;
  /**
   * Clear what a session may leave on its connection before the pool hands it to the next one:
   * settings (`SET`, `set_config(…, false)`, `search_path`, `ROLE`), temporary tables, session
   * advisory locks, `LISTEN`, cursors `WITH HOLD`, sequence state. Sent in the same round trip as
   * the session's last COMMIT or ROLLBACK. Default true; turn it off only if no code ever sets
   * session state.
   */
  readonly resetSession?: boolean;
  /**
   * The options every transaction of this database starts with (isolation level, read-only,
   * timeouts); a route, `runInNewCtx` or an atomic block can override them field by field.
   * Sent with BEGIN, in the same round trip.
   */
  readonly transaction?: TransactionOptions | undefined;
}

/**
 * What `DISCARD ALL` does, minus what it cannot do in our flight (it refuses to run in a
 * multi-statement string) and minus `DEALLOCATE ALL`, which would drop the prepared statements
 * node-postgres caches per connection (`name` queries) behind its back. `SET SESSION
 * AUTHORIZATION DEFAULT` also ends a `SET ROLE`. Each statement costs the server a little on
 * every request that used a connection: none is redundant.
 */
export const RESET_SESSION_SQL =
  'CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; ' +
  'SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES';

// Connections are opened, and handed between sessions, from an async scope of no request: a
// socket keeps the async context it was created in for all its callbacks, so one made while
// request A queried would otherwise run request B's 'notice' or 'notification' listeners (and
// pg-pool's hand-over to a waiter) inside A's context.
const poolScope = new AsyncResource('context-db.pool', { requireManualDestroy: true });

function defaultCreatePool(connectionString: string | undefined, poolConfig: PoolConfig): CreatePool {
  return (host) => {
    // pg waits forever for a free connection by default; a request should fail (503) instead.
    const config: PoolConfig = { connectionTimeoutMillis: 10_000, ...poolConfig };
    if (connectionString !== undefined) {
      // node-postgres lets a connection string override `host`, so the host goes into the URL.
      const url = new URL(connectionString);
      if (host !== undefined) url.host = host;
      config.connectionString = url.toString();
    } else if (host !== undefined) {
      config.host = host;
    }
    return new pg.Pool(config);
  };
}

function validate(options: DbConnectOptions): void {
  if (typeof options !== 'object' || options === null) {
    throw new InvalidOptionsError(
      'new DbConnect(options) needs an options object, e.g. new DbConnect({ connectionString: process.env.DATABASE_URL }).',
    );
  }
  const { createPool, connectionString, poolConfig, host, beforeCreateSession, onPoolError, resetSession } = options;
  if (resetSession !== undefined && typeof resetSession !== 'boolean') {
    throw new InvalidOptionsError(
      `DbConnect: resetSession must be true or false, got ${JSON.stringify(resetSession)}.`,
    );
  }
  if (createPool !== undefined && typeof createPool !== 'function') {
    throw new InvalidOptionsError('DbConnect: createPool must be a function (host) => new pg.Pool(…).');
  }
  if (createPool !== undefined && (connectionString !== undefined || poolConfig !== undefined)) {
    throw new InvalidOptionsError(
      'DbConnect: pass either createPool or connectionString/poolConfig, not both: createPool builds the whole pool.',
    );
  }
  if (createPool === undefined && connectionString === undefined && poolConfig === undefined) {
    throw new InvalidOptionsError(
      'DbConnect needs to know where the database is: pass connectionString (e.g. process.env.DATABASE_URL), ' +
        'poolConfig, or createPool. Is DATABASE_URL set?',
    );
  }
  if (connectionString !== undefined) {
    if (typeof connectionString !== 'string' || connectionString === '') {
      throw new InvalidOptionsError(
        `DbConnect: connectionString must be a non-empty string like postgres://user@localhost:5432/db, got ${JSON.stringify(connectionString)}. Is DATABASE_URL set?`,
      );
    }
    try {
      new URL(connectionString);
    } catch {
      throw new InvalidOptionsError(
        'DbConnect: connectionString is not a URL; expected postgres://user:password@host:5432/database.',
      );
    }
  }
  if (poolConfig !== undefined && (typeof poolConfig !== 'object' || poolConfig === null)) {
    throw new InvalidOptionsError('DbConnect: poolConfig must be a pg.PoolConfig object.');
  }
  if (host !== undefined && (typeof host !== 'string' || host === '')) {
    throw new InvalidOptionsError('DbConnect: host must be a non-empty string.');
  }
  for (const [name, fn] of [
    ['beforeCreateSession', beforeCreateSession],
    ['onPoolError', onPoolError],
  ] as const) {
    if (fn !== undefined && typeof fn !== 'function') {
      throw new InvalidOptionsError(`DbConnect: ${name} must be a function.`);
    }
  }
}

const UNREACHABLE_CODES = /^(ECONNREFUSED|ECONNRESET|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|57P03)$/;

/** Why a pool could not hand out a connection, as an error that says what to do about it. */
function unavailable(err: unknown, pool: Pool): unknown {
  if (!(err instanceof Error)) return err;
  const { max, connectionTimeoutMillis } = pool.options;
  // pg-pool's waiting-queue timeout; a connection attempt of its own times out with pg's message.
  const waited = /timeout exceeded when trying to connect/i.test(err.message);
  if (waited && pool.totalCount >= max) {
    return new DatabaseUnavailableError('POOL_EXHAUSTED', {
      cause: err,
      detail:
        `No pooled connection became free within ${connectionTimeoutMillis} ms: all ${max} are in use. ` +
        'Raise poolConfig.max (within the server max_connections), release connections sooner ' +
        '(closeDbSession before slow work), or lower the concurrency.',
    });
  }
  const code = (err as { code?: unknown }).code;
  if (
    waited ||
    /Connection terminated due to connection timeout/i.test(err.message) ||
    (typeof code === 'string' && UNREACHABLE_CODES.test(code))
  ) {
    return new DatabaseUnavailableError('DATABASE_UNREACHABLE', {
      cause: err,
      detail: `The database cannot be reached: ${err.message}`,
    });
  }
  return err;
}

/**
 * A session waiting for a connection from `pool`: moved to the next pool by `changeHost`, failed
 * by `close`, or withdrawn by its session when that is cut off (an abort, a deadline).
 */
interface Waiter {
  pool: Pool;
  resolve(client: PoolClient): void;
  reject(err: unknown): void;
}

/**
 * pg-pool's end() waits for the connections it is still opening, and nothing public calls one
 * off: against an unreachable host, close() (the last step of a graceful shutdown) would wait
 * out connectionTimeoutMillis. Nobody waits for them any more, so their sockets are destroyed;
 * each attempt then fails at once and leaves the pool. Private fields of pg and pg-pool, read
 * defensively: with another version this does nothing and close() only waits longer.
 */
function callOffConnecting(pool: Pool): void {
  const clients = (pool as unknown as { _clients?: unknown })._clients;
  if (!Array.isArray(clients)) return;
  for (const client of clients as Array<{ _connecting?: unknown; connection?: { stream?: { destroy?: unknown } } }>) {
    const stream = client.connection?.stream;
    if (client._connecting === true && typeof stream?.destroy === 'function') (stream.destroy as () => void)();
  }
}

const warnPoolError = (err: Error): void => {
  console.warn(`context-db: an idle pooled connection failed and was discarded: ${err.message}`);
};

/**
 * A database to talk to: owns a lazily created `pg.Pool` and makes sessions on it. Create one per
 * database at start-up and pass it to `dbSession(db)` and the adapters.
 *
 * @example
 * ```ts
 * export const db = new DbConnect({ connectionString: process.env.DATABASE_URL });
 * // or, with full control over the pool:
 * export const db2 = new DbConnect({ host: 'primary.internal', createPool: (host) => new pg.Pool({ host, max: 20 }) });
 * ```
 */
export class DbConnect {
  readonly #createPool: CreatePool;
  readonly #beforeCreateSession: BeforeCreateSession | undefined;
  readonly #onPoolError: (err: Error) => void;
  #host: string | undefined;
  #pool: Pool | undefined;
  #closed = false;
  // pg-pool's end() never serves its waiting queue, and a pool.connect() cannot be called off: a
  // waiter would wait out its whole connectionTimeoutMillis. So the waiters are known here, by
  // the promise their session awaits.
  readonly #waiters = new Map<Promise<PoolClient>, Waiter>();
  // Sessions take connections from whatever the pool is when they first query (after a
  // changeHost, the new one), so one driver serves them all.
  readonly #driver: SessionDriver;
  // Bumped by changeHost: a session whose connection came from an earlier pool moves to the
  // current one at its next transaction.
  #generation = 0;

  constructor(options: DbConnectOptions) {
    validate(options);
    this.#createPool = options.createPool ?? defaultCreatePool(options.connectionString, options.poolConfig ?? {});
    this.#host = options.host;
    this.#beforeCreateSession = options.beforeCreateSession;
    this.#onPoolError = options.onPoolError ?? warnPoolError;
    const connect = this;
    this.#driver = {
      acquire: () => this.#acquire(),
      get host() {
        return connect.#generation;
      },
      withdraw: (pending, reason) => {
        if (!this.#waiters.has(pending)) return;
        // An idle connection the pool is handing over arrives within this turn of the event loop;
        // the session's end then releases it unused before abort() resolves. A wait that outlasts
        // the turn (queued behind a full pool, a connection being opened) fails now.
        setImmediate(() => {
          const waiter = this.#waiters.get(pending);
          if (waiter === undefined) return;
          this.#waiters.delete(pending);
          waiter.reject(reason);
        });
      },
      release: (client, destroy) => poolScope.runInAsyncScope(() => client.release(destroy)),
      defaults:
        options.transaction === undefined
          ? undefined
          : validateTransactionOptions(options.transaction, 'new DbConnect({ transaction })'),
      beginSql: beginStatement,
      commitSql: () => 'COMMIT',
      rollbackSql: () => 'ROLLBACK',
      checkSql: 'SET CONSTRAINTS ALL IMMEDIATE',
      resetSql: options.resetSession === false ? '' : RESET_SESSION_SQL,
    };
  }

  #acquire(): Promise<PoolClient> {
    const pool = this.pool();
    let waiter!: Waiter;
    const pending = new Promise<PoolClient>((resolve, reject) => {
      waiter = { pool, resolve, reject };
    });
    this.#waiters.set(pending, waiter);
    this.#connect(pending, waiter);
    return pending;
  }

  // One attempt from the waiter's pool, in the pool's async scope. A connection that comes after
  // the waiter was settled or moved on (it is no longer waiting on this pool) goes straight back.
  #connect(pending: Promise<PoolClient>, waiter: Waiter): void {
    const pool = waiter.pool;
    poolScope
      .runInAsyncScope(() => pool.connect())
      .then(
        (client) => {
          if (waiter.pool === pool && this.#waiters.delete(pending)) waiter.resolve(client);
          // Back to its pool, which hands it to the next waiter (or, ending, closes it).
          else poolScope.runInAsyncScope(() => client.release());
        },
        (err: unknown) => {
          if (waiter.pool === pool && this.#waiters.delete(pending)) waiter.reject(unavailable(err, pool));
        },
      );
  }

  /** The host new pools are built for. */
  get host(): string | undefined {
    return this.#host;
  }

  /** The transaction options every session of this database starts from (`options.transaction`). */
  get transaction(): TransactionOptions | undefined {
    return this.#driver.defaults;
  }

  /** True after `close()`. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * The current pool, created on first call. Sessions take their connection from here when they
   * run their first query.
   *
   * @example
   * ```ts
   * console.log(db.pool().totalCount, db.pool().idleCount);
   * ```
   */
  pool(): Pool {
    if (this.#closed) throw new DbConnectClosedError();
    if (this.#pool === undefined) {
      const pool = this.#createPool(this.#host);
      if (typeof (pool as Partial<Pool> | undefined)?.connect !== 'function') {
        throw new InvalidOptionsError('DbConnect: createPool(host) must return a pg.Pool.');
      }
      pool.on('error', this.#onPoolError);
      this.#pool = pool;
    }
    return this.#pool;
  }

  /**
   * A new session outside any context, with `beforeCreateSession` awaited first. The caller owns
   * it and must close it (`await using` does).
   *
   * @example
   * ```ts
   * await using session = await db.createSession();
   * await session.query('SELECT 1');
   * ```
   */
  createSession(): Promise<DbSession> {
    if (this.#closed) return Promise.reject(new DbConnectClosedError());
    const hook = this.#beforeCreateSession;
    // No hook, no await: one session per request should not cost a chain of promises.
    if (hook === undefined) return Promise.resolve(new DbSession(this.#driver));
    return new Promise<void>((resolve) => resolve(hook(this))).then(() => new DbSession(this.#driver));
  }

  /**
   * Point new sessions at another host: the next connection comes from a pool built by
   * `createPool(host)`, and sessions still waiting for one of the old pool's get theirs from the
   * new pool at once, and a session holding an old connection between transactions (it
   * committed early) takes its next transaction's connection from the new pool (session-level
   * state such as `SET` or temporary tables stays behind). The old pool is ended once the
   * sessions still holding its connections close or move; the returned promise resolves then,
   * so do not await it while holding a session.
   *
   * @example
   * ```ts
   * void db.changeHost(await discoverPrimary());
   * ```
   */
  async changeHost(host: string): Promise<void> {
    if (typeof host !== 'string' || host === '') {
      throw new InvalidOptionsError('changeHost(host) needs a non-empty string.');
    }
    if (this.#closed) throw new DbConnectClosedError();
    if (host === this.#host) return;
    const old = this.#pool;
    this.#host = host;
    this.#pool = undefined;
    this.#generation++;
    if (old !== undefined) {
      for (const [pending, waiter] of this.#waiters) {
        if (waiter.pool !== old) continue;
        try {
          waiter.pool = this.pool();
        } catch (err) {
          this.#waiters.delete(pending);
          waiter.reject(err);
          continue;
        }
        this.#connect(pending, waiter);
      }
    }
    await old?.end();
  }

  /**
   * End the pool: idle connections close now, checked-out ones when their sessions close (the
   * returned promise resolves then); sessions waiting for a connection fail at once with
   * `DbConnectClosedError` (status 503), as does later use. Safe to call twice. Call it after
   * the server stopped taking requests and finished those in flight.
   *
   * @example
   * ```ts
   * process.on('SIGTERM', async () => { await app.close(); await db.close(); });
   * ```
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const pool = this.#pool;
    this.#pool = undefined;
    for (const waiter of this.#waiters.values()) waiter.reject(new DbConnectClosedError());
    this.#waiters.clear();
    if (pool === undefined) return;
    const ended = pool.end();
    callOffConnecting(pool);
    await ended;
  }
}
