import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { chooseStrategy, supportedStrategies } from '../../../src/forker/choose-strategy.js';
import { fakeQmpPeer, type FakeQmpServerOptions } from '../../helpers/fake-qmp-server.js';

const log = pino({ level: 'silent' });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const qmpWith = (handlers: FakeQmpServerOptions['handlers']) => fakeQmpPeer(handlers, cleanups, log);

describe('choosing a strategy never files a cancel or a dropped connection under "not supported"', () => {
  const capabilities = { return: [{ capability: 'background-snapshot', state: false }, { capability: 'pause-before-switchover', state: false }] };

  it('a QEMU refusing the capability: background-snapshot unsupported, with its reason', async () => {
    const { qmp } = await qmpWith({ 'query-migrate-capabilities': capabilities, 'migrate-set-capabilities': { error: { class: 'GenericError', desc: 'Postcopy is not supported' } } });
    const { supported, reasons } = await supportedStrategies(qmp, AbortSignal.timeout(2000));
    expect(supported).toEqual(['precopy']);
    expect(reasons['background-snapshot']).toMatch(/not supported/);
  });

  it('a cancel during the probe is rethrown as the cancel', async () => {
    const { server, qmp } = await qmpWith({ 'query-migrate-capabilities': capabilities, 'migrate-set-capabilities': { noReply: true } });
    const controller = new AbortController();
    const reason = new Error('Ctrl-C');
    const pending = chooseStrategy(qmp, 'background-snapshot', controller.signal);
    await server.waitForCommand('migrate-set-capabilities');
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
  });

  it('a dropped connection during the probe is QMP_DISCONNECTED, not STRATEGY_UNSUPPORTED', async () => {
    const { qmp } = await qmpWith({ 'query-migrate-capabilities': capabilities, 'migrate-set-capabilities': { drop: true } });
    await expect(chooseStrategy(qmp, 'auto', AbortSignal.timeout(2000))).rejects.toMatchObject({ code: 'QMP_DISCONNECTED' });
  });
});
