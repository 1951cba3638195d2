import { ForksnapError } from '../errors.js';

/**
 * A small method + path router: patterns like "/v1/jobs/:id/cancel". Parameters are
 * percent-decoded; a path that exists under another method answers 405 with the allowed ones.
 */
export type Method = 'GET' | 'POST' | 'DELETE';

export interface RouteRequest {
  readonly params: Record<string, string>;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly query: URLSearchParams;
  readonly body: unknown;
}

export interface RouteAnswer {
  readonly status?: number;
  readonly body: unknown;
}

export interface Route {
  readonly method: Method;
  readonly pattern: string;
  /** Whether the handler reads a JSON body. */
  readonly body?: boolean;
  readonly handler: (request: RouteRequest) => Promise<RouteAnswer> | RouteAnswer;
}

export class Router {
  readonly #routes: (Route & { segments: string[] })[] = [];

  add(route: Route): this {
    this.#routes.push({ ...route, segments: route.pattern.split('/').filter(Boolean) });
    return this;
  }

  match(method: string, pathname: string): { route: Route; params: Record<string, string> } {
    const segments = pathname.split('/').filter(Boolean);
    const allowed: string[] = [];
    for (const route of this.#routes) {
      const params = matchSegments(route.segments, segments);
      if (!params) continue;
      if (route.method === method) return { route, params };
      allowed.push(route.method);
    }
    if (allowed.length) throw new ForksnapError('METHOD_NOT_ALLOWED', `${method} is not allowed on ${pathname}; use ${allowed.join(' or ')}`, { method, path: pathname, allowed });
    throw new ForksnapError('ROUTE_NOT_FOUND', `no API route ${pathname}; the API is under /v1 (see docs/daemon.md)`, { path: pathname });
  }
}

function matchSegments(pattern: string[], actual: string[]): Record<string, string> | undefined {
  if (pattern.length !== actual.length) return undefined;
  const params: Record<string, string> = {};
  for (let index = 0; index < pattern.length; index++) {
    const want = pattern[index]!;
    const got = actual[index]!;
    if (want.startsWith(':')) {
      try {
        params[want.slice(1)] = decodeURIComponent(got);
      } catch {
        throw new ForksnapError('INVALID_NAME', `the path segment "${got}" is not valid percent-encoding`, { segment: got });
      }
    } else if (want !== got) {
      return undefined;
    }
  }
  return params;
}
