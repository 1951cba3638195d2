import { describe, expect, it } from 'vitest';
import { resolvePaths } from '../../src/config.js';
import { readMigrationSettings, type MigrationSettingsSnapshot } from '../../src/forker/migration-config.js';
import { newestPatchedBuild } from '../../src/qemu/binary.js';
import { runCli, startCli, toCliResult } from '../helpers/forksnap-cli.js';
import { expectNothingLeft } from '../helpers/leftovers.js';
import { vmStatus, withQmp } from '../helpers/qmp.js';
import { useSharedGuest, type SharedGuest } from '../helpers/shared-guest.js';
import { ensureXfsMount } from '../helpers/xfs.js';

/**
 * The parent's migration settings belong to the user: after every job, successful or cancelled
 * mid-way, query-migrate-capabilities and query-migrate-parameters answer exactly what they did
 * before it. The user's settings here differ from QEMU's defaults in what forksnap changes for a
 * capture (max-bandwidth, a capability it switches off: xbzrle) and in what precopy may raise
 * (downtime-limit), so a restore that forgets any of them fails the comparison.
 *
 * background-snapshot and precopy on stock QEMU, fork on the patched build: one guest boot each.
 */
const STOCK_QEMU = '/usr/bin/qemu-system-x86_64';
const patched = await newestPatchedBuild(resolvePaths());
if (!patched) throw new Error('the patched QEMU is not built: run `bash scripts/setup.sh` (it runs scripts/build-qemu.sh)');

const USER_PARAMETERS = { 'max-bandwidth': 32 * 1024 * 1024, 'downtime-limit': 1234, 'xbzrle-cache-size': 16 * 1024 * 1024, 'announce-rounds': 7 };

const readSettings = (guest: SharedGuest) => withQmp(guest.qmpSocket, (qmp) => readMigrationSettings(qmp));

async function setUserSettings(guest: SharedGuest): Promise<MigrationSettingsSnapshot> {
  await withQmp(guest.qmpSocket, async (qmp) => {
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'xbzrle', state: true }] });
    await qmp.execute('migrate-set-parameters', USER_PARAMETERS);
  });
  const settings = await readSettings(guest);
  expect(settings.capabilities.xbzrle).toBe(true);
  expect(settings.parameters).toMatchObject(USER_PARAMETERS);
  return settings;
}

/** Start a job and cancel it (SIGINT, as Ctrl-C) once `phase` has started: the capture's settings are applied by then. */
async function cancelledJob(guest: SharedGuest, strategy: string, phase: string): Promise<void> {
  let output = '';
  const cli = startCli(['snapshot', 'create', guest.vm.name, '--json', '--strategy', strategy], guest.state);
  cli.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const started = new RegExp(`"type":"phase-start","phase":"${phase}"`);
  const deadline = Date.now() + 60_000;
  while (!started.test(output) && Date.now() < deadline && cli.exitCode === null) await new Promise((resolve) => setTimeout(resolve, 5));
  expect(output, 'the job never reached the phase to cancel in').toMatch(started);
  cli.kill('SIGINT');
  const result = toCliResult(await cli);
  expect(result.exitCode, `${result.stderr.slice(-2000)}\n${result.stdout.slice(-2000)}`).toBe(130);
  const failed = result.lines.find((line) => line.type === 'job-failed');
  expect(failed).toMatchObject({ code: 'CANCELLED' });
  // Cancelled after prepare, where the capture's settings are applied: the restore had work to do.
  expect(['preflight', 'prepare']).not.toContain(failed?.phase);
}

function defineSettingsSuite(label: string, name: string, qemu: string, cases: { strategy: string; cancelAt: string }[]): void {
  describe(`migration settings are the user's again after every job: ${label}`, () => {
    // On XFS with reflink: precopy cannot use the fleecing view (QEMU inactivates all block nodes at its end).
    const guest = useSharedGuest(name, { diskFormat: 'qcow2', parentDir: ensureXfsMount, env: () => ({ FORKSNAP_QEMU: qemu }) });

    it.each(cases)('$strategy: after a successful job', async ({ strategy }) => {
      const before = await setUserSettings(guest);
      const cli = await runCli(['snapshot', 'create', name, '--json', '--strategy', strategy], guest.state);
      expect(cli.exitCode, `${cli.stderr.slice(-2000)}\n${cli.stdout.slice(-2000)}`).toBe(0);
      // A VM started from a spec: its disk keeps the spec's id (`-device …,id=data`).
      expect(cli.lines.find((line) => line.type === 'result')).toMatchObject({ snapshot: { strategy, disks: [{ id: 'data' }] } });
      expect(await readSettings(guest)).toEqual(before);
      expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
    });

    // Reversed: a background-snapshot cancelled mid-capture leaves QEMU 7.2's write-tracking flag
    // set (see release-write-protection.ts), after which forksnap refuses other strategies.
    it.each([...cases].reverse())('$strategy: after a job cancelled in its $cancelAt phase', async ({ strategy, cancelAt }) => {
      const before = await setUserSettings(guest);
      await cancelledJob(guest, strategy, cancelAt);
      expect(await readSettings(guest)).toEqual(before);
      expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
      await expectNothingLeft(guest.state, guest.vm.dir);
    });
  });
}

defineSettingsSuite('stock QEMU', 'migset', STOCK_QEMU, [
  { strategy: 'background-snapshot', cancelAt: 'halt' },
  // precopy streams before the halt: cancelled while it does.
  { strategy: 'precopy', cancelAt: 'capture' },
]);
defineSettingsSuite('patched QEMU', 'migfork', patched, [{ strategy: 'fork', cancelAt: 'halt' }]);
