// `node --import=./scripts/koa2/register.mjs …`: every `import … from 'koa'` in the process gets
// Koa 2 (the root's `koa2` alias) instead of Koa 3, so the Koa tests run unchanged against the
// oldest major the adapter's peer range allows. The adapter itself only imports Koa's types.
import { register } from 'node:module';

register('./hooks.mjs', import.meta.url);
