import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { ForksnapError } from '../errors.js';

/**
 * Bearer-token authentication for the TCP listener (the unix socket is protected by its 0600 mode
 * instead). Tokens are compared in constant time: both sides are hashed to equal-length digests
 * first, so neither the content nor the length leaks through timing.
 */
export const MIN_TOKEN_LENGTH = 16;

export function tokensEqual(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/** The token from `Authorization: Bearer …`, or (WebSocket upgrades only: browsers cannot set headers) `?access_token=`. */
export function presentedToken(request: IncomingMessage, url: URL, allowQuery: boolean): string | undefined {
  const header = request.headers.authorization;
  const match = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
  if (match) return match[1];
  return allowQuery ? url.searchParams.get('access_token') ?? undefined : undefined;
}

export function requireToken(request: IncomingMessage, url: URL, expected: string, allowQuery: boolean): void {
  const given = presentedToken(request, url, allowQuery);
  if (given === undefined) throw new ForksnapError('UNAUTHORIZED', 'this listener requires a bearer token: send "Authorization: Bearer <token>" (the token is in the daemon\'s tokenFile or $FORKSNAP_TOKEN)', {});
  if (!tokensEqual(given, expected)) throw new ForksnapError('UNAUTHORIZED', 'the bearer token is wrong', {});
}

/** The TCP token: the first line of `tokenFile`, else $FORKSNAP_TOKEN; refused if missing or short. */
export async function loadToken(tokenFile: string | undefined): Promise<string> {
  let token = process.env.FORKSNAP_TOKEN;
  if (tokenFile) {
    try {
      token = (await readFile(tokenFile, 'utf8')).split('\n')[0]!.trim();
    } catch (error) {
      throw new ForksnapError('CONFIG_INVALID', `cannot read the token file ${tokenFile}: ${(error as Error).message}`, { tokenFile }, { cause: error });
    }
  }
  if (!token) throw new ForksnapError('CONFIG_INVALID', 'a TCP listener needs a bearer token: set server.tcp.tokenFile (or --token-file) or $FORKSNAP_TOKEN', {});
  if (token.length < MIN_TOKEN_LENGTH || /\s/.test(token)) throw new ForksnapError('CONFIG_INVALID', `the bearer token must be at least ${MIN_TOKEN_LENGTH} characters without spaces (e.g. \`openssl rand -hex 32\`)`, {});
  return token;
}
