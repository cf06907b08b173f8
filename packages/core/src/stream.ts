import type { Readable } from 'node:stream';

/**
 * Resolve once `stream` has produced its first chunk (or ended empty), reject if it fails
 * first. Nothing is consumed: the chunk stays in the stream's buffer for whoever pipes it. An
 * adapter awaits this before committing, so that a body that fails before its first byte (a
 * missing file, a generator that throws) rolls back instead of committing and then failing.
 *
 * @example
 * ```ts
 * await firstChunk(body); // rejects with the stream's error if it fails before any data
 * const failure = await rc.end(statusCode);
 * ```
 */
export function firstChunk(stream: Readable): Promise<void> {
  if (stream.errored) return Promise.reject(stream.errored);
  if (stream.readableLength > 0 || stream.readableEnded) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const settle = (err?: unknown): void => {
      stream.off('readable', onReadable);
      stream.off('error', settle);
      stream.off('close', onClose);
      if (err === undefined) resolve();
      else reject(err);
    };
    const onReadable = (): void => settle();
    // Destroyed without an error and without data: nothing will ever come.
    const onClose = (): void =>
      settle(stream.errored ?? new Error('The response stream closed before its first chunk.'));
    stream.on('readable', onReadable);
    stream.once('error', settle);
    stream.once('close', onClose);
  });
}
