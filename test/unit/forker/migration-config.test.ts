import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ForksnapError } from '../../../src/errors.js';
import { applyMigrationSettings, readMigrationSettings, restoreMigrationSettings, type MigrationSettingsSnapshot } from '../../../src/forker/migration-config.js';
import { QmpClient } from '../../../src/qmp/client.js';
import { FakeQmpServer } from '../../helpers/fake-qmp-server.js';

const log = pino({ level: 'silent' });

/**
 * A fake parent that keeps its migration settings like QEMU 7.2 does: migrate-set-capabilities
 * validates the resulting set (background-snapshot refuses xbzrle), migrate-set-parameters changes
 * what it is given, and either can be made to refuse.
 */
class FakeMigrationState {
  capabilities: Record<string, boolean> = { xbzrle: true, events: false, 'background-snapshot': false, 'pause-before-switchover': false, 'x-fork-snapshot': false, multifd: false };
  parameters: Record<string, unknown> = { 'max-bandwidth': 134217728, 'downtime-limit': 300, 'xbzrle-cache-size': 67108864, 'tls-creds': '', 'announce-rounds': 5 };
  refuseParameter: string | undefined;
  refuseCapabilities = false;
  migrationStatus = 'none';

  install(server: FakeQmpServer): void {
    server.handle('query-migrate-capabilities', () => ({ return: Object.entries(this.capabilities).map(([capability, state]) => ({ capability, state })) }));
    server.handle('query-migrate-parameters', () => ({ return: { ...this.parameters } }));
    server.handle('query-migrate', () => ({ return: this.migrationStatus === 'none' ? {} : { status: this.migrationStatus } }));
    server.handle('migrate-set-capabilities', (args) => {
      if (this.refuseCapabilities) return { error: { class: 'GenericError', desc: 'There\'s a migration process in progress' } };
      const next = { ...this.capabilities };
      for (const { capability, state } of (args?.capabilities ?? []) as { capability: string; state: boolean }[]) next[capability] = state;
      if (next['background-snapshot'] && next.xbzrle) return { error: { class: 'GenericError', desc: 'Background-snapshot is not compatible with xbzrle' } };
      this.capabilities = next;
      return { return: {} };
    });
    server.handle('migrate-set-parameters', (args) => {
      if (this.refuseParameter && args && this.refuseParameter in args) return { error: { class: 'GenericError', desc: `Parameter '${this.refuseParameter}' refused` } };
      Object.assign(this.parameters, args);
      return { return: {} };
    });
  }
}

let server: FakeQmpServer | undefined;
let client: QmpClient | undefined;

async function setUp(): Promise<{ state: FakeMigrationState; qmp: QmpClient; server: FakeQmpServer }> {
  const state = new FakeMigrationState();
  server = await FakeQmpServer.start();
  state.install(server);
  client = await QmpClient.connect(server.path, { log, timeoutMs: 2000 });
  return { state, qmp: client, server };
}

afterEach(async () => {
  client?.close();
  await server?.close();
  client = undefined;
  server = undefined;
});

describe('migration settings', () => {
  it('sets what the capture needs, and the restore puts back every capability and parameter that changed (downtime-limit included)', async () => {
    const { state, qmp } = await setUp();
    const before = structuredClone({ capabilities: state.capabilities, parameters: state.parameters });
    const restore = await applyMigrationSettings(qmp, { capabilities: { 'background-snapshot': true }, parameters: { 'max-bandwidth': 1 << 30 } }, undefined, { log });
    expect(state.capabilities).toMatchObject({ 'background-snapshot': true, xbzrle: false, events: true });
    expect(state.parameters['max-bandwidth']).toBe(1 << 30);
    // What precopy does when the guest does not converge: not asked for by the job's settings.
    await qmp.execute('migrate-set-parameters', { 'downtime-limit': 60_000 });
    await restore();
    expect(state.capabilities).toEqual(before.capabilities);
    expect(state.parameters).toEqual(before.parameters);
  });

  it('switches capabilities off before it switches any on, both ways (QEMU checks each resulting set)', async () => {
    const { state, qmp, server } = await setUp();
    const restore = await applyMigrationSettings(qmp, { capabilities: { 'background-snapshot': true } });
    await restore();
    const calls = server.commandsNamed('migrate-set-capabilities').map((command) => (command.arguments!.capabilities as { capability: string; state: boolean }[]));
    expect(calls.map((caps) => caps.every((cap) => !cap.state) ? 'off' : caps.every((cap) => cap.state) ? 'on' : 'mixed')).toEqual(['off', 'on', 'off', 'on']);
    expect(state.capabilities.xbzrle).toBe(true);
  });

  it('calls beforeChange with the originals before changing anything; if it throws, nothing changes', async () => {
    const { state, qmp, server } = await setUp();
    const seen: MigrationSettingsSnapshot[] = [];
    const restore = await applyMigrationSettings(qmp, { capabilities: { 'x-fork-snapshot': true } }, undefined, {
      beforeChange: async (original) => {
        expect(server.commandsNamed('migrate-set-capabilities')).toHaveLength(0);
        seen.push(original);
      },
    });
    expect(seen).toEqual([{ capabilities: expect.objectContaining({ xbzrle: true, 'x-fork-snapshot': false }), parameters: expect.objectContaining({ 'downtime-limit': 300 }) }]);
    await restore();

    const failing = applyMigrationSettings(qmp, { capabilities: { 'x-fork-snapshot': true } }, undefined, { beforeChange: async () => { throw new Error('journal write failed'); } });
    await expect(failing).rejects.toThrow(/journal write failed/);
    expect(server.commandsNamed('migrate-set-capabilities')).toHaveLength(4);
    expect(state.capabilities['x-fork-snapshot']).toBe(false);
  });

  it('a refused parameter is logged and reported, and does not keep the others from being restored', async () => {
    const { state, qmp } = await setUp();
    const restore = await applyMigrationSettings(qmp, { capabilities: { 'pause-before-switchover': true }, parameters: { 'max-bandwidth': 1 << 30 } });
    await qmp.execute('migrate-set-parameters', { 'downtime-limit': 60_000 });
    state.refuseParameter = 'downtime-limit';
    const error = await restore().then(() => undefined, (caught: unknown) => caught);
    expect(error).toBeInstanceOf(ForksnapError);
    expect((error as ForksnapError).code).toBe('MIGRATION_RESTORE_FAILED');
    expect((error as ForksnapError).message).toMatch(/downtime-limit=300/);
    // Everything else is back.
    expect(state.parameters['max-bandwidth']).toBe(134217728);
    expect(state.capabilities).toMatchObject({ 'pause-before-switchover': false, xbzrle: true, events: false });
    // Once QEMU accepts it again, a second restore finishes the job.
    state.refuseParameter = undefined;
    await restore();
    expect(state.parameters['downtime-limit']).toBe(300);
  });

  it('a refused capability change is reported with MIGRATION_RESTORE_FAILED, not swallowed', async () => {
    const { state, qmp } = await setUp();
    const restore = await applyMigrationSettings(qmp, { capabilities: { 'background-snapshot': true } });
    state.refuseCapabilities = true;
    await expect(restore()).rejects.toMatchObject({ code: 'MIGRATION_RESTORE_FAILED', message: expect.stringMatching(/xbzrle=on/) });
  });

  it('waits for a cancelled migration to settle before restoring capabilities', async () => {
    const { state, qmp } = await setUp();
    const restore = await applyMigrationSettings(qmp, { capabilities: { 'background-snapshot': true } });
    state.migrationStatus = 'cancelling';
    setTimeout(() => { state.migrationStatus = 'cancelled'; }, 200);
    await restore();
    expect(state.capabilities['background-snapshot']).toBe(false);
  });

  it('throws when the parent\'s QMP connection is gone, instead of returning as if restored', async () => {
    const { qmp, server } = await setUp();
    const restore = await applyMigrationSettings(qmp, { capabilities: { 'background-snapshot': true } });
    server.dropConnections();
    await new Promise((resolve) => setTimeout(resolve, 50));
    await expect(restore()).rejects.toMatchObject({ code: 'MIGRATION_RESTORE_FAILED' });
  });

  it('when applying fails half-way, what was changed is put back and the apply error is thrown', async () => {
    const { state, qmp } = await setUp();
    const before = structuredClone({ capabilities: state.capabilities, parameters: state.parameters });
    state.refuseParameter = 'max-bandwidth';
    await expect(applyMigrationSettings(qmp, { capabilities: { 'background-snapshot': true }, parameters: { 'max-bandwidth': 1 << 30 } })).rejects.toThrow(/max-bandwidth/);
    expect(state.capabilities).toEqual(before.capabilities);
    expect(state.parameters).toEqual(before.parameters);
  });

  it('restoreMigrationSettings works from journaled originals alone (recovery after forksnap died)', async () => {
    const { state, qmp } = await setUp();
    const original = await readMigrationSettings(qmp);
    const journaled = JSON.parse(JSON.stringify(original)) as MigrationSettingsSnapshot;
    await applyMigrationSettings(qmp, { capabilities: { 'background-snapshot': true }, parameters: { 'max-bandwidth': 1 << 30, 'downtime-limit': 60_000 } });
    await restoreMigrationSettings(qmp, journaled);
    expect(await readMigrationSettings(qmp)).toEqual(original);
    expect(state.parameters['downtime-limit']).toBe(300);
  });
});
