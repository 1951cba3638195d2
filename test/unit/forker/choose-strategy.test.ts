import { describe, expect, it } from 'vitest';
import { chooseStrategy, supportedStrategies } from '../../../src/forker/choose-strategy.js';
import { useFakeQmpPeers } from '../../helpers/fake-qmp-peers.js';

const { qmpWith } = useFakeQmpPeers();

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

describe('fork-postcopy: offered where the QEMU has x-fork-postcopy and fork works', () => {
  const caps = (withPostcopy: boolean) => ({
    return: [
      { capability: 'x-fork-snapshot', state: false },
      ...(withPostcopy ? [{ capability: 'x-fork-postcopy', state: false }] : []),
      { capability: 'background-snapshot', state: false },
      { capability: 'pause-before-switchover', state: false },
    ],
  });

  it('the 10.0 series: supported, asked for by name, with the background push it was given', async () => {
    const { qmp } = await qmpWith({ 'query-migrate-capabilities': caps(true), 'migrate-set-capabilities': { return: {} } });
    const { supported } = await supportedStrategies(qmp, AbortSignal.timeout(2000), process.pid);
    expect(supported).toEqual(['fork', 'fork-postcopy', 'background-snapshot', 'precopy']);
    const { strategy } = await chooseStrategy(qmp, 'fork-postcopy', AbortSignal.timeout(2000), process.pid, { backgroundPush: 8 * 1048576 });
    expect(strategy.name).toBe('fork-postcopy');
    expect(strategy.capabilities).toEqual({ 'x-fork-snapshot': true, 'x-fork-postcopy': true, 'x-fork-postcopy-push': true });
    expect(strategy.parameters).toEqual({ 'max-postcopy-bandwidth': 8 * 1048576 });
    expect(strategy.childCapabilities).toEqual({ 'postcopy-ram': true });
    const off = await chooseStrategy(qmp, 'fork-postcopy', AbortSignal.timeout(2000), process.pid);
    expect(off.strategy.capabilities['x-fork-postcopy-push']).toBe(false);
  });

  it('auto takes fork-postcopy where it is supported, fork where it is not', async () => {
    const { qmp } = await qmpWith({ 'query-migrate-capabilities': caps(true), 'migrate-set-capabilities': { return: {} } });
    expect((await chooseStrategy(qmp, 'auto', AbortSignal.timeout(2000), process.pid)).strategy.name).toBe('fork-postcopy');
    const older = await qmpWith({ 'query-migrate-capabilities': caps(false), 'migrate-set-capabilities': { return: {} } });
    expect((await chooseStrategy(older.qmp, 'auto', AbortSignal.timeout(2000), process.pid)).strategy.name).toBe('fork');
  });

  it('a QEMU without x-fork-postcopy (a build before patch 0004): refused by name with the reason', async () => {
    const { qmp } = await qmpWith({ 'query-migrate-capabilities': caps(false), 'migrate-set-capabilities': { return: {} } });
    await expect(chooseStrategy(qmp, 'fork-postcopy', AbortSignal.timeout(2000))).rejects.toMatchObject({ code: 'STRATEGY_UNSUPPORTED', message: expect.stringMatching(/no "x-fork-postcopy" migration capability/) });
  });
});
