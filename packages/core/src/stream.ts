import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';

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

function isObject(value: unknown): value is object {
  return value !== null && typeof value === 'object';
}

/** A web `ReadableStream` of any realm (npm undici's too), recognised by shape as Fastify does. */
export function isWebStream(value: unknown): value is ReadableStream {
  return isObject(value) && typeof (value as { getReader?: unknown }).getReader === 'function';
}

function isPipeable(value: unknown): value is NodeJS.ReadableStream {
  return isObject(value) && typeof (value as { pipe?: unknown }).pipe === 'function';
}

/**
 * True for a response body that is a stream of any kind a framework sends: a `node:stream`, one
 * with `pipe()` of another library (minipass, readable-stream), or a web `ReadableStream`.
 *
 * @example
 * ```ts
 * if (isStreamBody(ctx.body)) await firstChunk(toReadable(ctx.body) as Readable);
 * ```
 */
export function isStreamBody(value: unknown): boolean {
  return isPipeable(value) || isWebStream(value);
}

/**
 * `body` as a `node:stream` Readable that `firstChunk` can wait on: the body itself when it is
 * one, else a wrapper (a `pipe()` stream of another library, a web stream of any realm). Reading
 * through a wrapper consumes the original, so whoever sends the body must send the wrapper; a
 * wrapped web stream is cancelled when the wrapper is destroyed. Undefined when `body` is no
 * stream.
 *
 * @example
 * ```ts
 * const held = toReadable(payload);
 * if (held !== undefined) { payload = held; await firstChunk(held); }
 * ```
 */
export function toReadable(body: unknown): Readable | undefined {
  if (body instanceof Readable) return body;
  if (isPipeable(body)) return new Readable().wrap(body);
  if (body instanceof ReadableStream) return Readable.fromWeb(body as WebReadableStream);
  if (isWebStream(body)) return Readable.from(chunksOf(body), { objectMode: false });
  return undefined;
}

// A web stream of another realm, which Readable.fromWeb refuses; cancelled when the Readable is
// destroyed.
async function* chunksOf(stream: ReadableStream): AsyncGenerator<Uint8Array> {
  const reader = stream.getReader();
  let done = false;
  try {
    for (;;) {
      const next = await reader.read();
      if (next.done) {
        done = true;
        return;
      }
      yield next.value as Uint8Array;
    }
  } finally {
    if (!done) await reader.cancel().catch(() => undefined);
  }
}
