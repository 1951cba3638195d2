import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { workRoot, type Paths } from '../../../src/config.js';
import { JobJournal, readJournal, type JournalEntry } from '../../../src/jobs/journal.js';
import { recoverInterruptedJobs, recoverJob } from '../../../src/jobs/recover-job.js';
import { processIdentity } from '../../../src/qemu/process-info.js';
import { FakeQmpServer } from '../../helpers/fake-qmp-server.js';
import { tempPaths, type TempPaths } from '../../helpers/temp-paths.js';

/** Recovery against a scripted parent (a fake QMP server on a real socket) and real files and processes. */
const log = pino({ level: 'silent' });
let tmp: TempPaths;
let paths: Paths;
let parent: FakeQmpServer;
let caps: Record<string, boolean>;
let params: Record<string, unknown>;
let nodes: Set<string>;
let exports: Set<string>;
const spawned: ChildProcess[] = [];

beforeEach(async () => {
  tmp = await tempPaths();
  paths = tmp.paths;
  caps = { events: true, 'x-fork-snapshot': true, xbzrle: false };
  params = { 'max-bandwidth': 68719476736, 'downtime-limit': 300, 'tls-creds': '' };
  nodes = new Set(['fs-fleece-d0', 'fs-fleece-file-d0', 'user-node']);
  exports = new Set(['fs-export-d0', 'user-export']);
  parent = await FakeQmpServer.start({
    handlers: {
      'query-migrate': { return: { status: 'completed' } },
      'query-status': { return: { running: true, status: 'running' } },
      'query-migrate-capabilities': () => ({ return: Object.entries(caps).map(([capability, state]) => ({ capability, state })) }),
      'migrate-set-capabilities': (args) => {
        for (const cap of args!.capabilities as { capability: string; state: boolean }[]) caps[cap.capability] = cap.state;
        return { return: {} };
      },
      'query-migrate-parameters': () => ({ return: { ...params } }),
      'migrate-set-parameters': (args) => {
        Object.assign(params, args);
        return { return: {} };
      },
      'query-block-exports': () => ({ return: [...exports].map((id) => ({ id, type: 'nbd', 'node-name': 'x', 'shutting-down': false })) }),
      'block-export-del': (args) => {
        exports.delete(String(args!.id));
        return { return: {} };
      },
      'nbd-server-stop': { return: {} },
      'query-block-jobs': { return: [] },
      'query-jobs': { return: [] },
      'query-named-block-nodes': () => ({ return: [...nodes].map((name) => ({ 'node-name': name })) }),
      'blockdev-del': (args) => {
        nodes.delete(String(args!['node-name']));
        return { return: {} };
      },
    },
  });
});
afterEach(async () => {
  for (const child of spawned.splice(0)) child.kill('SIGKILL');
  await parent.close();
  await tmp.cleanup();
});

const exists = (file: string) => access(file).then(() => true, () => false);

async function deadOwnerJournal(job: string, fields: Partial<JournalEntry>): Promise<JournalEntry> {
  // A job process that has exited: its identity can never match again.
  const owner = spawn('true');
  await new Promise((resolve) => owner.once('exit', resolve));
  const journal = new JobJournal(paths, { job, vm: 'vm1', parentSocket: parent.path, parent: await processIdentity(process.pid), ...fields });
  await journal.update(() => ({ pid: owner.pid!, owner: { pid: owner.pid!, startTime: 1, bootId: 'x' } }));
  return journal.entry;
}

describe('recoverJob', () => {
  it('drops only the exports and nodes the journal names (in its order), keeps an NBD server that still serves a user export, restores the migration settings, removes the journal', async () => {
    const entry = await deadOwnerJournal('j1', {
      strategy: 'fork',
      migrationSettings: { capabilities: { events: false, 'x-fork-snapshot': false, xbzrle: true }, parameters: { 'max-bandwidth': 134217728, 'downtime-limit': 300, 'tls-creds': '' } },
      disks: [{ disk: 'd0', backend: 'fleecing', nodes: ['fs-fleece-d0', 'fs-fleece-file-d0'], exports: ['fs-export-d0'], nbdServer: true, files: [] }],
    });
    const result = await recoverJob(paths, entry, log);
    expect(result.failures).toEqual([]);
    expect([...exports]).toEqual(['user-export']);
    expect([...nodes]).toEqual(['user-node']);
    // Nodes are deleted in the journal's order (the backend journals them in the order that works).
    expect(parent.commandsNamed('blockdev-del').map((c) => c.arguments?.['node-name'])).toEqual(['fs-fleece-d0', 'fs-fleece-file-d0']);
    // The user's own NBD export is still served: the server the job started stays up.
    expect(parent.commandsNamed('nbd-server-stop')).toEqual([]);
    expect(caps).toEqual({ events: false, 'x-fork-snapshot': false, xbzrle: true });
    expect(params).toEqual({ 'max-bandwidth': 134217728, 'downtime-limit': 300, 'tls-creds': '' });
    // Only what differed is set.
    expect(parent.commandsNamed('migrate-set-parameters').map((c) => c.arguments)).toEqual([{ 'max-bandwidth': 134217728 }]);
    expect(parent.commandsNamed('migrate_cancel')).toEqual([]);
    expect(await readJournal(paths, 'j1')).toBeUndefined();
  });

  it('never deletes a file another process holds open, nor one that is not provably the job\'s; keeps the journal then', async () => {
    const workDir = path.join(workRoot(paths), 'j2');
    await mkdir(workDir, { recursive: true });
    const held = path.join(workDir, 'fleece.qcow2');
    const loose = path.join(workDir, 'sock');
    const foreign = path.join(tmp.root, 'user-disk.qcow2');
    for (const file of [held, loose, foreign]) await writeFile(file, 'x');
    const holder = spawn('sh', ['-c', `exec 3<'${held}'; exec sleep 30`], { stdio: 'ignore' });
    spawned.push(holder);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const entry = await deadOwnerJournal('j2', { workDir, tempFiles: [loose, foreign], disks: [{ disk: 'd0', backend: 'fleecing', files: [held] }] });
    const result = await recoverJob(paths, entry, log);
    expect(result.failures.join('\n')).toMatch(/held open by another process.*fleece\.qcow2/);
    expect(await exists(held)).toBe(true);
    expect(await exists(foreign)).toBe(true);
    expect(await exists(loose)).toBe(false);
    expect(await readJournal(paths, 'j2')).toBeDefined();

    holder.kill('SIGKILL');
    await new Promise((resolve) => holder.once('exit', resolve));
    const again = await recoverJob(paths, (await readJournal(paths, 'j2'))!, log);
    expect(again.failures).toEqual([]);
    expect(await exists(workDir)).toBe(false);
    expect(await exists(foreign)).toBe(true);
  });

  it('a parent that is alive but does not answer QMP is not taken for dead: nothing is done inside it, the journal is kept', async () => {
    const entry = await deadOwnerJournal('j3', { halted: true, parentSocket: path.join(tmp.root, 'nobody.sock'), overlays: [{ disk: 'd0', overlayNode: 'ov', baseNode: 'base', overlayFile: path.join(tmp.root, 'ov.qcow2'), baseFile: path.join(tmp.root, 'base.qcow2') }] });
    await writeFile(path.join(tmp.root, 'ov.qcow2'), 'overlay');
    const result = await recoverJob(paths, entry, log, { connectMs: 500 });
    expect(result.failures.join('\n')).toMatch(/alive but its QMP socket does not answer/);
    expect(result.failures.join('\n')).toMatch(/does not answer QMP: not merging/);
    expect(await exists(path.join(tmp.root, 'ov.qcow2'))).toBe(true);
    expect(await readJournal(paths, 'j3')).toBeDefined();
  });

  it('a parent QEMU that is gone (another process now, e.g. the VM restarted after a host crash) is left alone; our files are removed', async () => {
    const workDir = path.join(workRoot(paths), 'j4');
    await mkdir(workDir, { recursive: true });
    await writeFile(path.join(workDir, 'fleece.qcow2'), 'x');
    const entry = await deadOwnerJournal('j4', { halted: true, workDir, parent: { pid: process.pid, startTime: 1, bootId: 'old-boot' }, migrationSettings: { capabilities: { events: false }, parameters: {} } });
    const result = await recoverJob(paths, entry, log);
    expect(result.failures).toEqual([]);
    expect(parent.received.filter((c) => c.execute !== 'qmp_capabilities')).toEqual([]);
    expect(await exists(workDir)).toBe(false);
  });
});

describe('recoverInterruptedJobs', () => {
  it('skips journals whose owner runs, and leaves a journal to its live supervisor until it is gone', async () => {
    const live = new JobJournal(paths, { job: 'live', vm: 'vm1', parentSocket: parent.path });
    await live.update(() => ({}));
    const supervisor = spawn('sleep', ['1']);
    spawned.push(supervisor);
    await deadOwnerJournal('supervised', { supervisor: await processIdentity(supervisor.pid!) });
    const started = Date.now();
    const results = await recoverInterruptedJobs(paths, log, 'vm1', { waitForSupervisorMs: 5_000 });
    expect(Date.now() - started).toBeGreaterThan(500);
    expect(results.map((r) => r.job)).toEqual(['supervised']);
    expect(await readJournal(paths, 'live')).toBeDefined();
  });
});
