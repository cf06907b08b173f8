import { InvalidOptionsError } from './errors.js';

/** The isolation levels PostgreSQL implements (`read uncommitted` behaves as `read committed`). */
export type IsolationLevel = 'read committed' | 'repeatable read' | 'serializable';

/**
 * How a transaction runs. Every field is optional: what is not set keeps PostgreSQL's (or the
 * enclosing level's) setting. Timeouts are in milliseconds, `0` turning a timeout off.
 */
export interface TransactionOptions {
  readonly isolationLevel?: IsolationLevel;
  /** `true`: writes fail with SQLSTATE 25006; `false` forces read-write over a read-only default. */
  readonly readOnly?: boolean;
  /** Only with `isolationLevel: 'serializable'` and `readOnly: true`: wait for a safe snapshot, never fail with 40001. */
  readonly deferrable?: boolean;
  /** `statement_timeout` for the transaction's statements; a statement cancelled by it fails with 57014. */
  readonly statementTimeout?: number;
  /** `lock_timeout`: how long a statement may wait for a lock (fails with 55P03). */
  readonly lockTimeout?: number;
  /** `idle_in_transaction_session_timeout`: the server ends the session when the transaction idles longer. */
  readonly idleInTransactionTimeout?: number;
}

/**
 * How often to run a block whose transaction failed with a serialization failure (40001) or a
 * deadlock (40P01): a number is `attempts`, the total number of runs including the first. Between
 * runs the block waits a random delay that doubles with each attempt, from `minDelayMs`
 * (default 10) up to `maxDelayMs` (default 500).
 */
export type RetryOptions =
  | number
  | { readonly attempts: number; readonly minDelayMs?: number; readonly maxDelayMs?: number };

const LEVELS: readonly IsolationLevel[] = ['read committed', 'repeatable read', 'serializable'];
const FLAGS = ['readOnly', 'deferrable'] as const;
// Our names for the settings PostgreSQL scopes to a transaction with SET LOCAL.
const TIMEOUTS = {
  statementTimeout: 'statement_timeout',
  lockTimeout: 'lock_timeout',
  idleInTransactionTimeout: 'idle_in_transaction_session_timeout',
} as const;
type Timeout = keyof typeof TIMEOUTS;
const KEYS: readonly string[] = ['isolationLevel', ...FLAGS, ...Object.keys(TIMEOUTS)];
// PostgreSQL's limit for a millisecond setting.
const MAX_MS = 2_147_483_647;

function isMs(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= MAX_MS;
}

const checked = new WeakSet<TransactionOptions>();

/**
 * Check transaction options where they are configured (a `DbConnect`, a route, a block), so that
 * a typo or a bad value fails at start-up rather than as a database error mid-request. Returns a
 * frozen copy holding only the fields that were set.
 */
export function validateTransactionOptions(options: unknown, where: string): TransactionOptions {
  if (typeof options === 'object' && options !== null && checked.has(options as TransactionOptions)) {
    return options as TransactionOptions;
  }
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new InvalidOptionsError(
      `${where}: transaction options must be an object like { isolationLevel: 'serializable', readOnly: true }, got ${JSON.stringify(options)}.`,
    );
  }
  const record = options as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (!KEYS.includes(key) && record[key] !== undefined) {
      throw new InvalidOptionsError(
        `${where}: unknown transaction option "${key}"; the options are ${KEYS.join(', ')}.`,
      );
    }
  }
  const result: Record<string, unknown> = {};
  // Read by name, not by own keys: getters of a class and inherited fields count too.
  for (const key of KEYS) {
    const value = record[key];
    if (value === undefined) continue;
    if (key === 'isolationLevel' && !LEVELS.includes(value as IsolationLevel)) {
      throw new InvalidOptionsError(
        `${where}: isolationLevel must be one of ${LEVELS.map((l) => `'${l}'`).join(', ')}, got ${JSON.stringify(value)}.`,
      );
    }
    if ((FLAGS as readonly string[]).includes(key) && typeof value !== 'boolean') {
      throw new InvalidOptionsError(`${where}: ${key} must be true or false, got ${JSON.stringify(value)}.`);
    }
    if (key in TIMEOUTS && !isMs(value)) {
      throw new InvalidOptionsError(
        `${where}: ${key} must be a whole number of milliseconds from 0 (no timeout) to ${MAX_MS}, got ${JSON.stringify(value)}.`,
      );
    }
    result[key] = value;
  }
  // The level and access mode may come from the defaults these are merged over: only a
  // contradiction within the same options is certain to be a mistake.
  if (
    result.deferrable === true &&
    ((result.isolationLevel !== undefined && result.isolationLevel !== 'serializable') || result.readOnly === false)
  ) {
    throw new InvalidOptionsError(
      `${where}: deferrable only has an effect on a serializable read-only transaction: ` +
        "pass { isolationLevel: 'serializable', readOnly: true, deferrable: true }, or drop deferrable.",
    );
  }
  const frozen = Object.freeze(result) as TransactionOptions;
  checked.add(frozen);
  return frozen;
}

const merged = new WeakMap<TransactionOptions, WeakMap<TransactionOptions, TransactionOptions>>();

/**
 * `override`'s fields over `base`'s (either may be missing). Cached by identity: options are
 * fixed per route or database, so a request merges without allocating.
 */
export function mergeTransactionOptions(
  base: TransactionOptions | undefined,
  override: TransactionOptions | undefined,
): TransactionOptions | undefined {
  if (base === undefined) return override;
  if (override === undefined) return base;
  let byOverride = merged.get(base);
  if (byOverride === undefined) {
    byOverride = new WeakMap();
    merged.set(base, byOverride);
  }
  let result = byOverride.get(override);
  if (result === undefined) {
    result = Object.freeze({ ...base, ...override });
    checked.add(result);
    byOverride.set(override, result);
  }
  return result;
}

/** `SET LOCAL` statements for the timeouts that are set, each prefixed with `; `. */
export function setLocalTimeouts(options: TransactionOptions): string {
  let sql = '';
  for (const key of Object.keys(TIMEOUTS) as Timeout[]) {
    const value = options[key];
    if (value !== undefined) sql += `; SET LOCAL ${TIMEOUTS[key]} = ${value}`;
  }
  return sql;
}

/**
 * `SET LOCAL` statements that put back, for each timeout `options` set, the value `outer` has
 * (or the session's default), each prefixed with `; `.
 */
export function restoreLocalTimeouts(options: TransactionOptions, outer: TransactionOptions | undefined): string {
  let sql = '';
  for (const key of Object.keys(TIMEOUTS) as Timeout[]) {
    if (options[key] !== undefined) sql += `; SET LOCAL ${TIMEOUTS[key]} = ${outer?.[key] ?? 'DEFAULT'}`;
  }
  return sql;
}

const begins = new WeakMap<TransactionOptions, string>();

/**
 * The statement that opens a transaction with these options: one simple-query string, so that
 * the modes and timeouts travel in the BEGIN's own round trip.
 */
export function beginStatement(options: TransactionOptions | undefined): string {
  if (options === undefined) return 'BEGIN';
  let sql = begins.get(options);
  if (sql === undefined) {
    const modes: string[] = [];
    if (options.isolationLevel !== undefined) modes.push(`ISOLATION LEVEL ${options.isolationLevel.toUpperCase()}`);
    if (options.readOnly !== undefined) modes.push(options.readOnly ? 'READ ONLY' : 'READ WRITE');
    if (options.deferrable !== undefined) modes.push(options.deferrable ? 'DEFERRABLE' : 'NOT DEFERRABLE');
    sql = (modes.length === 0 ? 'BEGIN' : `BEGIN ${modes.join(', ')}`) + setLocalTimeouts(options);
    begins.set(options, sql);
  }
  return sql;
}

interface Retry {
  readonly attempts: number;
  readonly minDelayMs: number;
  readonly maxDelayMs: number;
}

/** Check `retry` where it is given; undefined for none. */
export function validateRetry(retry: unknown, where: string): Retry | undefined {
  if (retry === undefined) return undefined;
  const hint = 'e.g. retry: 3 or retry: { attempts: 3, minDelayMs: 10, maxDelayMs: 500 }';
  const record: Record<string, unknown> | undefined =
    typeof retry === 'number'
      ? { attempts: retry }
      : typeof retry === 'object' && retry !== null
        ? { ...retry }
        : undefined;
  if (record === undefined)
    throw new InvalidOptionsError(`${where}: retry must be a number of attempts or an object, ${hint}.`);
  const { attempts, minDelayMs = 10, maxDelayMs = 500, ...rest } = record;
  const unknown = Object.keys(rest)[0];
  if (unknown !== undefined) {
    throw new InvalidOptionsError(`${where}: unknown retry option "${unknown}"; ${hint}.`);
  }
  if (typeof attempts !== 'number' || !Number.isInteger(attempts) || attempts < 1) {
    throw new InvalidOptionsError(
      `${where}: retry attempts must be a whole number >= 1, got ${JSON.stringify(attempts)}.`,
    );
  }
  if (!isMs(minDelayMs) || !isMs(maxDelayMs) || maxDelayMs < minDelayMs) {
    throw new InvalidOptionsError(
      `${where}: retry delays must be whole milliseconds with minDelayMs <= maxDelayMs, got ${JSON.stringify({ minDelayMs, maxDelayMs })}.`,
    );
  }
  return { attempts, minDelayMs, maxDelayMs };
}

const RETRYABLE = new Set(['40001', '40P01']);

/** A serialization failure or a deadlock, thrown directly or as the cause of a failed COMMIT. */
export function isRetryable(err: unknown): boolean {
  for (let at = err, depth = 0; at !== null && typeof at === 'object' && depth < 5; depth++) {
    const code = (at as { code?: unknown }).code;
    if (typeof code === 'string' && RETRYABLE.has(code)) return true;
    at = (at as { cause?: unknown }).cause;
  }
  return false;
}

/**
 * Run `attempt` until it succeeds, fails with an error other than a serialization failure or a
 * deadlock, or has run `retry.attempts` times; the last error is rethrown unchanged.
 */
export async function withRetry<R>(retry: Retry | undefined, attempt: () => Promise<R>): Promise<R> {
  for (let run = 1; ; run++) {
    try {
      return await attempt();
    } catch (err) {
      if (retry === undefined || run >= retry.attempts || !isRetryable(err)) throw err;
      // Jittered exponential backoff: half the step fixed, half random, so that two transactions
      // that collided once do not collide again in lockstep.
      const step = Math.min(retry.maxDelayMs, retry.minDelayMs * 2 ** (run - 1));
      await new Promise((resolve) => setTimeout(resolve, step / 2 + Math.random() * (step / 2)));
    }
  }
}
