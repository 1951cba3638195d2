import { writeFile } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import path from 'node:path';
import { dir } from 'tmp-promise';
import { describe, expect, it } from 'vitest';
import { loadToken, requireToken, tokensEqual } from '../../../src/server/auth.js';

const TOKEN = 'a-long-enough-token-0123456789';
const request = (authorization?: string) => ({ headers: authorization ? { authorization } : {} }) as IncomingMessage;
const url = (query = '') => new URL(`http://host/v1/events${query}`);

describe('bearer token', () => {
  it('compares tokens of any length without throwing', () => {
    expect(tokensEqual(TOKEN, TOKEN)).toBe(true);
    expect(tokensEqual(TOKEN, `${TOKEN}x`)).toBe(false);
    expect(tokensEqual('', TOKEN)).toBe(false);
  });

  it('accepts "Authorization: Bearer" and, for WebSocket upgrades only, ?access_token=', () => {
    expect(() => requireToken(request(`Bearer ${TOKEN}`), url(), TOKEN, false)).not.toThrow();
    expect(() => requireToken(request(`bearer   ${TOKEN} `), url(), TOKEN, false)).not.toThrow();
    expect(() => requireToken(request(), url(`?access_token=${TOKEN}`), TOKEN, true)).not.toThrow();
    expect(() => requireToken(request(), url(`?access_token=${TOKEN}`), TOKEN, false)).toThrow(expect.objectContaining({ code: 'UNAUTHORIZED', message: expect.stringMatching(/requires a bearer token/) }));
    expect(() => requireToken(request(`Basic ${TOKEN}`), url(), TOKEN, false)).toThrow(expect.objectContaining({ code: 'UNAUTHORIZED' }));
    expect(() => requireToken(request('Bearer wrong-token-wrong-token'), url(), TOKEN, false)).toThrow(expect.objectContaining({ code: 'UNAUTHORIZED', message: 'the bearer token is wrong' }));
  });

  it('loads the token from a file (first line) or $FORKSNAP_TOKEN, and refuses a weak one', async () => {
    const tmp = await dir({ unsafeCleanup: true });
    const previous = process.env.FORKSNAP_TOKEN;
    try {
      await writeFile(path.join(tmp.path, 'token'), `${TOKEN}\nignored\n`);
      expect(await loadToken(path.join(tmp.path, 'token'))).toBe(TOKEN);
      process.env.FORKSNAP_TOKEN = `env-${TOKEN}`;
      expect(await loadToken(undefined)).toBe(`env-${TOKEN}`);
      process.env.FORKSNAP_TOKEN = 'short';
      await expect(loadToken(undefined)).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
      delete process.env.FORKSNAP_TOKEN;
      await expect(loadToken(undefined)).rejects.toMatchObject({ code: 'CONFIG_INVALID', message: expect.stringMatching(/needs a bearer token/) });
      await expect(loadToken(path.join(tmp.path, 'missing'))).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
    } finally {
      if (previous === undefined) delete process.env.FORKSNAP_TOKEN;
      else process.env.FORKSNAP_TOKEN = previous;
      await tmp.cleanup();
    }
  });
});
