// autocannon 8 ships no type declarations (and @types/autocannon is not installed): the part of
// its programmatic API the bench uses.
declare module 'autocannon' {
  namespace autocannon {
    interface Histogram {
      readonly average: number;
      readonly mean: number;
      readonly stddev: number;
      readonly min: number;
      readonly max: number;
      readonly total: number;
      readonly p50: number;
      readonly p90: number;
      readonly p99: number;
    }
    interface Options {
      readonly url: string;
      readonly method?: string;
      readonly headers?: Readonly<Record<string, string>>;
      readonly body?: string;
      readonly connections?: number;
      readonly pipelining?: number;
      /** Seconds. */
      readonly duration?: number;
      /** Seconds per request before it counts as a timeout. */
      readonly timeout?: number;
    }
    interface Result {
      /** Requests per second samples; `total` is the number of completed requests. */
      readonly requests: Histogram;
      /** Milliseconds. */
      readonly latency: Histogram;
      /** Seconds. */
      readonly duration: number;
      readonly errors: number;
      readonly timeouts: number;
      readonly non2xx: number;
      readonly '2xx': number;
    }
    interface Instance extends PromiseLike<Result> {
      stop(): void;
    }
  }
  function autocannon(options: autocannon.Options): autocannon.Instance;
  export = autocannon;
}
