import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { supportedStrategies } from '../../../src/forker/choose-strategy.js';
import { QmpClient } from '../../../src/qmp/client.js';
import { FakeQmpServer } from '../../helpers/fake-qmp-server.js';

const log = pino({ level: 'silent' });
let server: FakeQmpServer | undefined;
let qmp: QmpClient | undefined;
afterEach(async () => {
  qmp?.close();
  await server?.close();
});

describe('probing strategies with the user\'s own migration capabilities on', () => {
  it('xbzrle on (incompatible with background-snapshot) does not make background-snapshot "unsupported", and stays on', async () => {
    const caps: Record<string, boolean> = { xbzrle: true, 'background-snapshot': false, 'pause-before-switchover': false };
    server = await FakeQmpServer.start({
      handlers: {
        'query-migrate-capabilities': () => ({ return: Object.entries(caps).map(([capability, state]) => ({ capability, state })) }),
        'migrate-set-capabilities': (args) => {
          const next = { ...caps };
          for (const { capability, state } of (args?.capabilities ?? []) as { capability: string; state: boolean }[]) next[capability] = state;
          if (next.xbzrle && next['background-snapshot']) return { error: { class: 'GenericError', desc: 'Background-snapshot is not compatible with xbzrle' } };
          Object.assign(caps, next);
          return { return: {} };
        },
      },
    });
    qmp = await QmpClient.connect(server.path, { log, timeoutMs: 2000 });
    const { supported } = await supportedStrategies(qmp, AbortSignal.timeout(2000));
    expect(supported).toContain('background-snapshot');
    expect(caps).toEqual({ xbzrle: true, 'background-snapshot': false, 'pause-before-switchover': false });
  });
});
