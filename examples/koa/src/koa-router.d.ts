// @koa/router 14 ships no type declarations and @types/koa__router is not installed here: the
// part of its API the example and the tests use, typed on Koa's own middleware types.
declare module '@koa/router' {
  import type { DefaultContext, DefaultState, Middleware } from 'koa';

  namespace Router {
    interface RouterParamContext {
      params: Record<string, string>;
    }
    type RouterMiddleware<StateT = DefaultState, ContextT = DefaultContext> = Middleware<
      StateT,
      ContextT & RouterParamContext
    >;
    interface RouterOptions {
      prefix?: string;
      exclusive?: boolean;
    }
  }

  class Router<StateT = DefaultState, ContextT = DefaultContext> {
    constructor(options?: Router.RouterOptions);
    get(path: string, ...middleware: Router.RouterMiddleware<StateT, ContextT>[]): this;
    post(path: string, ...middleware: Router.RouterMiddleware<StateT, ContextT>[]): this;
    put(path: string, ...middleware: Router.RouterMiddleware<StateT, ContextT>[]): this;
    delete(path: string, ...middleware: Router.RouterMiddleware<StateT, ContextT>[]): this;
    all(path: string, ...middleware: Router.RouterMiddleware<StateT, ContextT>[]): this;
    use(...middleware: Router.RouterMiddleware<StateT, ContextT>[]): this;
    routes(): Middleware<StateT, ContextT>;
    allowedMethods(): Middleware<StateT, ContextT>;
  }

  export = Router;
}
