import {
  ContextNotInitiatedError,
  currentCtx,
  DbConnect,
  type DbSession,
  InvalidOptionsError,
  newNonCtxAtomicSession,
  TransactionAlreadyOpenError,
  type TransactionOptions,
  validateTransactionOptions,
} from '@context-db/core';
import {
  type Casing,
  createTableRelationsHelpers,
  DefaultLogger,
  type ExtractTablesWithRelations,
  extractTablesRelationalConfig,
  type Logger,
  type RelationalSchemaConfig,
  type TablesRelationalConfig,
} from 'drizzle-orm';
import { NodePgDatabase, NodePgSession, NodePgTransaction } from 'drizzle-orm/node-postgres';
import { PgDialect, type PgTransactionConfig } from 'drizzle-orm/pg-core';
import type { Client, QueryConfig, QueryResult } from 'pg';

/** What a query does outside any context-db context. */
export type OutsideContext = 'throw' | 'pool';

/** `drizzle()`'s options that apply here, and what to do outside a context. */
export interface ContextDrizzleConfig<TSchema extends Record<string, unknown> = Record<string, never>> {
  /** Tables and relations, for `orm.query.<table>` (relational queries), as with `drizzle()`. */
  readonly schema?: TSchema;
  /** `true` logs every query with Drizzle's `DefaultLogger`; or a `Logger` of your own. */
  readonly logger?: boolean | Logger;
  /** How Drizzle maps property names to column names, as with `drizzle()`. */
  readonly casing?: Casing;
  /**
   * Outside a context: `'throw'` (default) rejects with `ContextNotInitiatedError`; `'pool'` runs
   * each query, and each transaction, in a transaction and on a pool connection of its own.
   */
  readonly outsideContext?: OutsideContext;
}

/** The database returned by `contextDrizzle`: Drizzle's node-postgres database, on a `DbConnect`. */
export type ContextDrizzleDatabase<TSchema extends Record<string, unknown> = Record<string, never>> =
  NodePgDatabase<TSchema> & {
    /** The database every query runs on, through the current context's session. */
    readonly $client: DbConnect;
  };

type Query = (config: QueryConfig, values?: unknown[]) => Promise<QueryResult>;

const KEYS = ['schema', 'logger', 'casing', 'outsideContext'];

/**
 * A Drizzle database, typed exactly like `drizzle()`'s node-postgres one, whose every query runs
 * on the current context's session for `db`: it commits or rolls back with the request (or
 * `runInNewCtx`), and sees the request's uncommitted writes. Inside a context,
 * `orm.transaction(fn)` is a savepoint of the context's transaction, rolled back alone when `fn`
 * throws. Create it once, at module level.
 *
 * @example
 * ```ts
 * export const orm = contextDrizzle(db, { schema });
 *
 * export async function addNote(text: string) {
 *   await orm.insert(notes).values({ text }); // the request's transaction
 * }
 * ```
 */
export function contextDrizzle<TSchema extends Record<string, unknown> = Record<string, never>>(
  db: DbConnect,
  config: ContextDrizzleConfig<TSchema> = {},
): ContextDrizzleDatabase<TSchema> {
  const where = 'contextDrizzle(db, { schema, logger, casing, outsideContext })';
  if (!(db instanceof DbConnect)) {
    throw new InvalidOptionsError(`${where}: db must be a DbConnect, the database the queries run on.`);
  }
  if (typeof config !== 'object' || config === null) {
    throw new InvalidOptionsError(`${where}: the options must be an object, got ${JSON.stringify(config)}.`);
  }
  const unknown = Object.keys(config).find((key) => !KEYS.includes(key));
  if (unknown !== undefined) {
    throw new InvalidOptionsError(`${where}: unknown option "${unknown}"; the options are ${KEYS.join(', ')}.`);
  }
  const { schema, logger, casing, outsideContext = 'throw' } = config;
  if (outsideContext !== 'throw' && outsideContext !== 'pool') {
    throw new InvalidOptionsError(
      `${where}: outsideContext must be 'throw' or 'pool', got ${JSON.stringify(outsideContext)}.`,
    );
  }

  const dialect = new PgDialect(casing === undefined ? {} : { casing });
  let relational: RelationalSchemaConfig<TablesRelationalConfig> | undefined;
  if (schema !== undefined) {
    const tables = extractTablesRelationalConfig(schema, createTableRelationsHelpers);
    relational = { fullSchema: schema, schema: tables.tables, tableNamesMap: tables.tableNamesMap };
  }
  const options = { logger: logger === true ? new DefaultLogger() : logger === false ? undefined : logger };

  /** A Drizzle session sending its statements to `query` and its transactions to `transaction`. */
  const drizzleSession = (query: Query, transaction: TransactionRunner) =>
    new ContextPgSession(query, transaction, dialect, relational, options);

  const inContext = (): Promise<DbSession> | undefined => currentCtx()?.getSession(db);
  const notInContext = () =>
    new ContextNotInitiatedError(
      "A query of contextDrizzle()'s database (which runs outside a context with outsideContext: 'pool')",
    );

  /** A transaction whose statements all go to `session`; nested ones are savepoints of it. */
  const transactionOn = (session: DbSession, nestedIndex: number): ContextPgTransaction => {
    const query: Query = (text, values) => session.query(text, values);
    const runner: TransactionRunner = (fn, txOptions) =>
      inSavepoint(session, () => fn(transactionOn(session, nestedIndex + 1)), txOptions);
    return new ContextPgTransaction(dialect, drizzleSession(query, runner), relational, nestedIndex, runner);
  };

  const query: Query = (text, values) => {
    const session = inContext();
    if (session !== undefined) return session.then((s) => s.query(text, values));
    if (outsideContext === 'pool') return newNonCtxAtomicSession(db, (s) => s.query(text, values));
    return Promise.reject(notInContext());
  };
  const transaction: TransactionRunner = (fn, txOptions) => {
    const session = inContext();
    if (session !== undefined) return session.then((s) => inSavepoint(s, () => fn(transactionOn(s, 0)), txOptions));
    if (outsideContext === 'pool') {
      return newNonCtxAtomicSession(db, (s) => fn(transactionOn(s, 0)), txOptions && { transaction: txOptions });
    }
    return Promise.reject(notInContext());
  };

  // drizzle() makes the same cast: the relational config is built from TSchema at run time.
  const orm = new NodePgDatabase<TSchema>(
    dialect,
    drizzleSession(query, transaction),
    relational as RelationalSchemaConfig<ExtractTablesWithRelations<TSchema>> | undefined,
  );
  return Object.assign(orm, { $client: db });
}

type TransactionRunner = <T>(
  fn: (tx: ContextPgTransaction) => Promise<T>,
  options: TransactionOptions | undefined,
) => Promise<T>;

/**
 * Run `fn` in a savepoint of `session`'s transaction (begun with it when none is open), holding
 * the session as a nested atomic block does: other work of the context waits until it ends.
 */
function inSavepoint<T>(session: DbSession, fn: () => Promise<T>, options: TransactionOptions | undefined): Promise<T> {
  return session.exclusive(async () => {
    if (options === undefined) return session.savepoint(fn);
    await session.drain();
    if (session.inTransaction) {
      throw new TransactionAlreadyOpenError(
        "Drizzle's transaction config (isolationLevel, accessMode, deferrable) was given inside a transaction " +
          "already open on the context session: PostgreSQL fixes it at the transaction's BEGIN. Set it on the " +
          'route or the DbConnect, or begin this transaction before any other query of the request.',
      );
    }
    return session.withOptions(options, () => session.savepoint(fn));
  }, true);
}

/** Drizzle's transaction config as core's transaction options; undefined when there are none. */
function transactionOptions(config: PgTransactionConfig | undefined): TransactionOptions | undefined {
  if (config === undefined) return undefined;
  const { isolationLevel, accessMode, deferrable } = config;
  if (isolationLevel === undefined && accessMode === undefined && deferrable === undefined) return undefined;
  return validateTransactionOptions(
    {
      // PostgreSQL runs 'read uncommitted' as 'read committed'.
      isolationLevel: isolationLevel === 'read uncommitted' ? 'read committed' : isolationLevel,
      readOnly: accessMode === undefined ? undefined : accessMode === 'read only',
      deferrable,
    },
    'Drizzle transaction(fn, config)',
  );
}

// Drizzle's generics are those of NodePgSession; the concrete schema types only matter to callers.
type AnySchema = Record<string, unknown>;

/** Drizzle's node-postgres session, sending its statements to context-db and its transactions to core. */
class ContextPgSession extends NodePgSession<AnySchema, TablesRelationalConfig> {
  readonly #transaction: TransactionRunner;

  constructor(
    query: Query,
    transaction: TransactionRunner,
    dialect: PgDialect,
    schema: RelationalSchemaConfig<TablesRelationalConfig> | undefined,
    options: { logger?: Logger | undefined },
  ) {
    // Drizzle's prepared queries only ever call client.query(config, values).
    super(
      { query } as unknown as Client,
      dialect,
      schema,
      options.logger === undefined ? {} : { logger: options.logger },
    );
    this.#transaction = transaction;
  }

  override transaction<T>(
    fn: (tx: NodePgTransaction<AnySchema, TablesRelationalConfig>) => Promise<T>,
    config?: PgTransactionConfig,
  ): Promise<T> {
    try {
      return this.#transaction(fn, transactionOptions(config));
    } catch (err) {
      return Promise.reject(err);
    }
  }
}

/** Drizzle's transaction object, whose nested `transaction()` is a core savepoint. */
class ContextPgTransaction extends NodePgTransaction<AnySchema, TablesRelationalConfig> {
  readonly #transaction: TransactionRunner;

  constructor(
    dialect: PgDialect,
    session: ContextPgSession,
    schema: RelationalSchemaConfig<TablesRelationalConfig> | undefined,
    nestedIndex: number,
    transaction: TransactionRunner,
  ) {
    super(dialect, session, schema, nestedIndex);
    this.#transaction = transaction;
  }

  override transaction<T>(fn: (tx: NodePgTransaction<AnySchema, TablesRelationalConfig>) => Promise<T>): Promise<T> {
    return this.#transaction(fn, undefined);
  }
}
