import { chmod, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { ForksnapError } from '../errors.js';
import { requireToken } from './auth.js';
import { readJsonBody, sendError, sendJson, toHttpError } from './http-io.js';
import type { DaemonMetrics } from './metrics.js';
import type { Router } from './router.js';
import { WEB_PAGE } from './web-page.js';
import { socketAnswers } from './socket-path.js';
import type { WebSocketHub } from './websocket-hub.js';

export interface HttpServerOptions {
  readonly router: Router;
  readonly hub: WebSocketHub;
  readonly metrics: DaemonMetrics;
  readonly log: Logger;
  readonly maxBodyBytes: number;
}

/**
 * One request handler behind two kinds of listener: the unix socket (no token: its 0600 mode is
 * the access control) and TCP (every route but the static page needs the bearer token).
 * Routes: GET / (page), GET /metrics, /v1/... (api-routes.ts), and the /v1/events WebSocket.
 */
export function createHttpServer(options: HttpServerOptions, token: string | undefined): Server {
  const log = options.log.child({ component: 'http', listener: token ? 'tcp' : 'unix' });
  const server = createServer((request, response) => {
    void handle(options, token, request, response, log);
  });
  server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    const url = new URL(request.url ?? '/', 'http://forksnap.invalid');
    try {
      if (url.pathname !== '/v1/events') throw new ForksnapError('ROUTE_NOT_FOUND', `no WebSocket endpoint ${url.pathname}; use /v1/events`, { path: url.pathname });
      if (token) requireToken(request, url, token, true);
      options.hub.handleUpgrade(request, socket, head, url);
    } catch (error) {
      const failure = toHttpError(error);
      const body = JSON.stringify({ error: failure.toJSON() });
      socket.end(`HTTP/1.1 ${failure.httpStatus} ${failure.code}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    }
  });
  server.on('clientError', (error, socket) => {
    log.debug({ err: error.message }, 'malformed HTTP request');
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
  });
  return server;
}

async function handle(options: HttpServerOptions, token: string | undefined, request: IncomingMessage, response: ServerResponse, log: Logger): Promise<void> {
  const started = performance.now();
  const method = request.method ?? 'GET';
  let url: URL;
  try {
    url = new URL(request.url ?? '/', 'http://forksnap.invalid');
  } catch {
    sendError(response, new ForksnapError('INVALID_INPUT', 'the request URL cannot be parsed', {}));
    return;
  }
  try {
    if (method === 'GET' && (url.pathname === '/' || url.pathname === '/index.html')) {
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', 'content-security-policy': "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:" });
      response.end(WEB_PAGE);
      return;
    }
    if (token) requireToken(request, url, token, false);
    if (method === 'GET' && url.pathname === '/metrics') {
      const { contentType, body } = await options.metrics.render();
      response.writeHead(200, { 'content-type': contentType });
      response.end(body);
      return;
    }
    if (url.pathname === '/v1/events') throw new ForksnapError('INVALID_INPUT', '/v1/events is a WebSocket endpoint: connect with a WebSocket client', {});
    const { route, params } = options.router.match(method, url.pathname);
    const body = route.body ? await readJsonBody(request, options.maxBodyBytes) : undefined;
    const answer = await route.handler({ params, headers: request.headers, query: url.searchParams, body });
    sendJson(response, answer.status ?? 200, answer.body);
    log.debug({ method, path: url.pathname, status: answer.status ?? 200, ms: Math.round(performance.now() - started) }, 'request');
  } catch (error) {
    const failure = toHttpError(error);
    if (failure.code === 'INTERNAL') log.error({ method, path: url.pathname, err: failure.message, stack: (failure.cause as Error | undefined)?.stack }, 'request failed');
    else log.info({ method, path: url.pathname, status: failure.httpStatus, code: failure.code }, 'request refused');
    sendError(response, failure);
  }
}

/**
 * Listen on a unix socket readable and writable by the owner only: created under umask 0177 (no
 * window where it is open to others) and chmod 0600. A stale socket file is removed; a live one
 * means another daemon runs there, which is refused.
 */
export async function listenUnix(server: Server, socketPath: string): Promise<void> {
  if (await socketAnswers(socketPath)) throw new ForksnapError('DAEMON_RUNNING', `a daemon already listens on ${socketPath}; stop it first or use another --socket`, { socket: socketPath });
  await rm(socketPath, { force: true });
  const previous = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(previous);
  }
  await chmod(socketPath, 0o600);
}

export async function listenTcp(server: Server, host: string, port: number): Promise<{ host: string; port: number }> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as net.AddressInfo;
  return { host: address.address, port: address.port };
}

export async function closeServer(server: Server): Promise<void> {
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
