export {
  ClientAbortedError,
  type ContextDbOptions,
  createDbHelpers,
  type DbHelpers,
  RequestCtx,
  routeTransactionOptions,
  validateContextDbOptions,
} from './adapter.js';
export {
  type AtomicOptions,
  atomicDbSession,
  type CurrentTransactionMode,
  closeAllSessions,
  closeDbSession,
  commitAllSessions,
  commitDbSession,
  dbSession,
  type NewTransactionOptions,
  newNonCtxAtomicSession,
  newNonCtxSession,
  onCommit,
  onRollback,
  rollbackAllSessions,
  rollbackDbSession,
  runInNewCtx,
} from './api.js';
export {
  type BeforeCreateSession,
  type CreatePool,
  DbConnect,
  type DbConnectOptions,
  RESET_SESSION_SQL,
} from './connect.js';
export {
  type BeforeCommitCallback,
  currentCtx,
  DbSessionCtx,
  defaultCommitOn,
  type FinishOptions,
  isContextInitiated,
  runOutsideCtx,
  setDbDeadline,
} from './context.js';
export {
  CommitFailedError,
  type CommitFailureOptions,
  CommitOutcomeUnknownError,
  ContextAlreadyInitiatedError,
  ContextDbError,
  type ContextDbErrorOptions,
  ContextNotInitiatedError,
  DatabaseUnavailableError,
  DbConnectClosedError,
  DeadlineExceededError,
  InvalidOptionsError,
  NestedAtomicBlockError,
  SessionClosedError,
  TransactionAlreadyOpenError,
} from './errors.js';
export { DbSession, type TransactionHook } from './session.js';
export { firstChunk, isStreamBody, isWebStream, toReadable } from './stream.js';
export {
  type IsolationLevel,
  type RetryOptions,
  type TransactionOptions,
  validateTransactionOptions,
} from './transaction.js';
