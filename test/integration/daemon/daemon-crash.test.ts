import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isAlive } from '../../../src/qemu/process-info.js';
import { api, EventClient, spawnDaemon, waitForJob, type DaemonProcess } from '../../helpers/daemon-process.js';
import { runCli } from '../../helpers/forksnap-cli.js';
import { findChildQemu, killLeftovers, processesMentioning } from '../../helpers/processes.js';
import { vmDiskFiles, vmStatus } from '../../helpers/qmp.js';
import { startGuestVm, type GuestVm } from '../../helpers/test-guest.js';

/**
 * The daemon killed (SIGKILL) in the middle of a real job: the job's supervisor (a process of its
 * own) unwinds it at once, with nobody restarting anything: parent running, disk view dropped,
 * orphaned child QEMU killed, temporary files removed. Restarted, the daemon marks the job failed
 * with the reason and what the supervisor did. And SIGTERM: stop accepting, bring the running job
 * to a safe end, exit 0. The guest ignores the power button (fsnap.nobutton=1), so the
 * shutdown phase lasts as long as the job's shutdown timeout: a reliable "during shutdown".
 */
let dir: string;
let stateDir: string;
let vm: GuestVm;
let parentPid: number;
let qmpSocket: string;
const daemons: DaemonProcess[] = [];

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'forksnap-daemon-crash-'));
  stateDir = path.join(dir, 'state');
  vm = await startGuestVm({ name: 'dc', dir: path.join(dir, 'vm'), stateDir, nic: false, append: 'fsnap.workload=1 fsnap.nobutton=1' });
  const record = JSON.parse(await readFile(path.join(stateDir, 'vms', 'dc', 'vm.json'), 'utf8'));
  parentPid = record.pid;
  qmpSocket = record.qmpSocket;
});

afterAll(async () => {
  vm?.control.close();
  for (const daemon of daemons) {
    if (daemon.process.exitCode === null && daemon.process.signalCode === null) {
      daemon.signal('SIGTERM');
      await daemon.process;
    }
  }
  await runCli(['vm', 'stop', 'dc', '--no-daemon'], stateDir);
  const left = await killLeftovers(dir);
  await rm(dir, { recursive: true, force: true });
  expect(left, 'QEMU processes left running').toEqual([]);
});

afterEach((context) => {
  if (context.task.result?.state !== 'fail') return;
  for (const daemon of daemons) console.error(`--- daemon ${daemon.pid} log (tail) ---\n${daemon.logs().slice(-6000)}`);
});

async function start(args: string[] = []): Promise<DaemonProcess> {
  const daemon = await spawnDaemon(stateDir, args);
  daemons.push(daemon);
  return daemon;
}

async function filesUnder(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((entry) => entry.isFile()).map((entry) => path.join(entry.parentPath, entry.name));
}

/** The crash journals (a supervisor that acted leaves its log next to them: a record, not state). */
async function journals(): Promise<string[]> {
  return (await filesUnder(path.join(stateDir, 'jobs'))).filter((file) => !file.endsWith('.supervisor.log'));
}

/** Everything a job changes is undone: one QEMU (the parent) running on its own disk, no temporary file. */
async function expectCleanAfterRecovery(childPid: number): Promise<void> {
  expect(await isAlive(childPid), 'the orphaned child QEMU was killed').toBe(false);
  const qemus = await processesMentioning(dir);
  expect(qemus.map((proc) => proc.pid)).toEqual([parentPid]);
  expect(await vmStatus(qmpSocket)).toMatchObject({ running: true, status: 'running' });
  expect(await vmDiskFiles(qmpSocket)).toEqual([vm.disk]);
  expect(await journals(), 'crash journals').toEqual([]);
  expect(await filesUnder(path.join(stateDir, 'work')), 'work files').toEqual([]);
  expect((await readdir(path.join(stateDir, 'snapshots')).catch(() => [])).filter((name) => name.startsWith('.')), 'partial snapshots').toEqual([]);
  expect((await filesUnder(dir)).filter((file) => /overlay|\.child\.|forksnap-revert/.test(path.basename(file))), 'overlays').toEqual([]);
  const tick = vm.control.lastTick;
  expect(await vm.control.waitForTick(tick + 3, 30_000), 'the guest keeps running').toBeGreaterThan(tick);
}

async function killDuring(phase: string, job: object): Promise<{ id: string; childPid: number }> {
  const daemon = daemons.at(-1)!;
  const client = await EventClient.unix(daemon.socket, 'job=*');
  const answer = await api(daemon, 'POST', '/v1/jobs', job);
  expect(answer.status, JSON.stringify(answer.body)).toBe(202);
  const id = answer.body.id as string;
  await client.waitForEvent(id, 'phase-start', (event) => event.phase === phase);
  await delay(1000);
  const record = (await api(daemon, 'GET', `/v1/jobs/${id}`)).body;
  expect(record).toMatchObject({ status: 'running', phase });
  const childPid = await findChildQemu(dir);
  expect(childPid, 'a child QEMU runs mid-job').toBeDefined();
  daemon.signal('SIGKILL');
  await daemon.process;
  client.close();
  // Nobody restarts anything yet: the job's supervisor alone unwinds it, within seconds.
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && ((await isAlive(childPid!)) || (await journals()).length > 0)) await delay(100);
  expect(await isAlive(childPid!), 'the supervisor killed the orphaned child').toBe(false);
  expect(await journals(), 'the supervisor unwound the job: no journal left').toEqual([]);
  expect((await vmStatus(qmpSocket)).status).toBe('running');
  return { id, childPid: childPid! };
}

describe('forksnap daemon: killed and restarted mid-job', () => {
  it('recovers a job killed during capture', async () => {
    await start();
    const { id, childPid } = await killDuring('capture', { vm: 'dc', strategy: 'fork', maxBandwidth: 8 * 1024 * 1024 } /* ~90 MiB of RAM: a capture of ~11 s */);
    const daemon = await start();
    const record = (await api(daemon, 'GET', `/v1/jobs/${id}`)).body;
    expect(record).toMatchObject({ id, status: 'failed', error: { code: 'DAEMON_INTERRUPTED', phase: 'capture' } });
    expect(record.error.message).toMatch(/killed or crashed.*during phase capture/);
    // Cancelling the migration may end the child by itself (its incoming stream fails) before the
    // supervisor gets to kill it.
    expect(record.error.message).toMatch(new RegExp(`its supervisor unwound it: .*(cancelled the job's migration|killed orphaned child QEMU ${childPid})`));
    await expectCleanAfterRecovery(childPid);
  });

  it('recovers a job killed during the child shutdown, and takes snapshots again afterwards', async () => {
    const { id, childPid } = await killDuring('shutdown', { vm: 'dc', shutdownTimeoutSeconds: 120 });
    const daemon = await start();
    const record = (await api(daemon, 'GET', `/v1/jobs/${id}`)).body;
    expect(record).toMatchObject({ id, status: 'failed', error: { code: 'DAEMON_INTERRUPTED', phase: 'shutdown' } });
    expect(record.error.message).toMatch(new RegExp(`its supervisor unwound it: .*killed orphaned child QEMU ${childPid}`));
    await expectCleanAfterRecovery(childPid);
    expect((await api(daemon, 'GET', '/v1/snapshots')).body).toEqual([]);

    const again = await api(daemon, 'POST', '/v1/jobs', { vm: 'dc', shutdownTimeoutSeconds: 2 });
    const done = await waitForJob(daemon, again.body.id);
    expect(done, JSON.stringify(done.error)).toMatchObject({ status: 'succeeded', consistency: 'crash-consistent' });
  });

  it('on SIGTERM stops accepting jobs, cancels and unwinds a job that outlasts the grace time, and exits 0', async () => {
    const previous = daemons.at(-1);
    if (previous && previous.process.exitCode === null && previous.process.signalCode === null) {
      previous.signal('SIGTERM');
      expect((await previous.process).exitCode, 'an idle daemon exits 0 on SIGTERM').toBe(0);
    }
    await writeFile(path.join(dir, 'grace.yaml'), 'jobs:\n  shutdownGraceSeconds: 2\n');
    const daemon = await start(['--config', path.join(dir, 'grace.yaml')]);
    const client = await EventClient.unix(daemon.socket, 'job=*');
    const id = (await api(daemon, 'POST', '/v1/jobs', { vm: 'dc', shutdownTimeoutSeconds: 120 })).body.id as string;
    await client.waitForEvent(id, 'phase-start', (event) => event.phase === 'shutdown');
    const childPid = (await findChildQemu(dir))!;
    daemon.signal('SIGTERM');
    for (let i = 0; i < 50 && (await api(daemon, 'GET', '/v1/health')).body.acceptingJobs; i++) await delay(100);
    const refused = await api(daemon, 'POST', '/v1/jobs', { vm: 'dc' });
    expect(refused.status).toBe(503);
    expect(refused.body.error.code).toBe('DAEMON_SHUTTING_DOWN');
    const failed = await client.waitForEvent(id, 'job-failed');
    expect(failed.code).toBe('CANCELLED');
    expect((await daemon.process).exitCode).toBe(0);
    const saved = JSON.parse(await readFile(path.join(stateDir, 'daemon', 'jobs', `${id}.json`), 'utf8'));
    expect(saved).toMatchObject({ status: 'cancelled', error: { code: 'CANCELLED' } });
    await expectCleanAfterRecovery(childPid);
  });

  it('cancels a running job through the API: it unwinds and ends cancelled', async () => {
    const daemon = await start();
    const client = await EventClient.unix(daemon.socket, 'job=*');
    const id = (await api(daemon, 'POST', '/v1/jobs', { vm: 'dc', strategy: 'fork', maxBandwidth: 8 * 1024 * 1024 })).body.id as string;
    await client.waitForEvent(id, 'phase-start', (event) => event.phase === 'capture');
    const childPid = (await findChildQemu(dir))!;
    const cancelled = await api(daemon, 'POST', `/v1/jobs/${id}/cancel`);
    expect(cancelled.status).toBe(202);
    const failed = await client.waitForEvent(id, 'job-failed');
    expect(failed).toMatchObject({ code: 'CANCELLED', phase: 'capture' });
    expect(client.events(id).at(-1)).toEqual(failed);
    expect((await api(daemon, 'GET', `/v1/jobs/${id}`)).body).toMatchObject({ status: 'cancelled', error: { code: 'CANCELLED' } });
    expect((await api(daemon, 'POST', `/v1/jobs/${id}/cancel`)).body.error.code).toBe('JOB_FINISHED');
    await expectCleanAfterRecovery(childPid);
    daemon.signal('SIGTERM');
    expect((await daemon.process).exitCode).toBe(0);
  });

  it('on SIGTERM lets a job that fits in the grace time finish', async () => {
    const daemon = await start();
    const client = await EventClient.unix(daemon.socket, 'job=*');
    const id = (await api(daemon, 'POST', '/v1/jobs', { vm: 'dc', shutdownTimeoutSeconds: 2 })).body.id as string;
    await client.waitForEvent(id, 'phase-start', (event) => event.phase === 'capture');
    daemon.signal('SIGTERM');
    const done = await client.waitForEvent(id, 'job-done');
    expect(done.consistency).toBe('crash-consistent');
    expect((await daemon.process).exitCode).toBe(0);
    const saved = JSON.parse(await readFile(path.join(stateDir, 'daemon', 'jobs', `${id}.json`), 'utf8'));
    expect(saved).toMatchObject({ status: 'succeeded', snapshotId: done.snapshotId });
    expect((await processesMentioning(dir)).map((proc) => proc.pid)).toEqual([parentPid]);
  });
});
