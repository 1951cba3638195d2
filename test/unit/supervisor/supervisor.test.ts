import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { workRoot, type Paths } from '../../../src/config.js';
import { journalFile } from '../../../src/jobs/journal.js';
import { isSameProcess, processIdentity, type ProcessIdentity } from '../../../src/qemu/process-info.js';
import { waitForPidExit } from '../../../src/qemu/child-process.js';
import { supervisorLogFile } from '../../../src/supervisor/start-supervisor.js';
import { FakeQmpServer } from '../../helpers/fake-qmp-server.js';
import { REPO } from '../../helpers/forksnap-cli.js';
import { tempPaths, type TempPaths } from '../../helpers/temp-paths.js';

/**
 * The supervisor protocol with real processes (the built dist/): a fake job process writes a
 * journal and starts its supervisor; the "parent VM" is a fake QMP server paused by that job, the
 * "child QEMU" a real sleep process. Kill the job: the supervisor must unwind within 2 s.
 */
const FAKE_JOB = path.join(REPO, 'test', 'fixtures', 'supervisor', 'fake-job.mjs');

let tmp: TempPaths;
let paths: Paths;
let parent: FakeQmpServer;
let running: boolean;
const spawned: ChildProcess[] = [];

beforeEach(async () => {
  tmp = await tempPaths();
  paths = tmp.paths;
  running = false;
  parent = await FakeQmpServer.start({
    handlers: {
      'query-migrate': { return: {} },
      'query-status': () => ({ return: { running, status: running ? 'running' : 'paused' } }),
      cont: () => {
        running = true;
        return { return: {} };
      },
    },
  });
});
afterEach(async () => {
  for (const child of spawned.splice(0)) if (child.pid) try { process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ }
  await parent.close();
  await tmp.cleanup();
});

async function fakeChild(): Promise<{ process: ChildProcess; identity: ProcessIdentity }> {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  spawned.push(child);
  return { process: child, identity: await processIdentity(child.pid!) };
}

async function startFakeJob(job: string, init: Record<string, unknown>, options: { detached?: boolean } = {}): Promise<{ job: ChildProcess; supervisor: number }> {
  const child = spawn(process.execPath, [FAKE_JOB, paths.stateDir, job, JSON.stringify(init)], { stdio: ['pipe', 'pipe', 'inherit'], detached: options.detached ?? false });
  spawned.push(child);
  const supervisor = await new Promise<number>((resolve, reject) => {
    let text = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      text += chunk;
      const match = /ready (\d+)/.exec(text);
      if (match) resolve(Number(match[1]));
    });
    child.once('exit', (code) => reject(new Error(`fake job exited ${code}`)));
  });
  return { job: child, supervisor };
}

async function waitFor(check: () => Promise<boolean> | boolean, ms: number): Promise<number> {
  const start = Date.now();
  while (!(await check())) {
    if (Date.now() - start > ms) throw new Error(`not within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return Date.now() - start;
}

const exists = (file: string) => access(file).then(() => true, () => false);

async function journalInit(job: string) {
  const child = await fakeChild();
  const workDir = path.join(workRoot(paths), job);
  await mkdir(workDir, { recursive: true });
  const fleece = path.join(workDir, 'fleece.qcow2');
  await writeFile(fleece, 'data');
  const init = {
    vm: 'vm1',
    parentSocket: parent.path,
    parent: await processIdentity(process.pid),
    strategy: 'fork',
    qemuVersion: '7.2.22',
    phase: 'capture',
    halted: true,
    workDir,
    child: child.identity,
    disks: [{ disk: 'd0', backend: 'fleecing', files: [fleece] }],
  };
  return { init, child, workDir, fleece };
}

describe('the job supervisor (dead-man\'s switch)', () => {
  it('SIGKILL of the job: the parent is resumed within 2 s, the child killed, the files and the journal removed; the supervisor exits', async () => {
    const { init, child, workDir } = await journalInit('job-kill');
    const { job, supervisor } = await startFakeJob('job-kill', init);
    const supervisorIdentity = await processIdentity(supervisor);
    expect(JSON.parse(await readFile(journalFile(paths, 'job-kill'), 'utf8')).supervisor).toEqual(supervisorIdentity);
    const killedAt = Date.now();
    job.kill('SIGKILL');
    await parent.waitForCommand('cont');
    const resumedAfterMs = Date.now() - killedAt;
    expect(resumedAfterMs).toBeLessThan(2_000);
    expect(await waitForPidExit(child.process.pid!, 5_000)).toBe(true);
    await waitFor(async () => !(await isSameProcess(supervisorIdentity)), 10_000);
    expect(await exists(workDir)).toBe(false);
    expect(await exists(journalFile(paths, 'job-kill'))).toBe(false);
    const log = await readFile(supervisorLogFile(paths, 'job-kill'), 'utf8');
    expect(log).toMatch(/the job process died without finishing/);
    expect(log).toMatch(/resumed the parent VM/);
  });

  it('survives a SIGHUP to the job\'s process group (the terminal closing) and unwinds the job it killed', async () => {
    const { init, child } = await journalInit('job-hup');
    const { job, supervisor } = await startFakeJob('job-hup', init, { detached: true });
    const supervisorIdentity = await processIdentity(supervisor);
    process.kill(-job.pid!, 'SIGHUP');
    process.kill(-job.pid!, 'SIGINT');
    await parent.waitForCommand('cont');
    expect(await waitForPidExit(child.process.pid!, 5_000)).toBe(true);
    await waitFor(async () => !(await exists(journalFile(paths, 'job-hup'))), 10_000);
    await waitFor(async () => !(await isSameProcess(supervisorIdentity)), 10_000);
  });

  it('"done": the supervisor exits without acting and removes its log', async () => {
    const { init, child, fleece } = await journalInit('job-done');
    const { job, supervisor } = await startFakeJob('job-done', init);
    const supervisorIdentity = await processIdentity(supervisor);
    job.stdin!.write('done\n');
    await waitFor(async () => !(await isSameProcess(supervisorIdentity)), 10_000);
    expect(parent.commandsNamed('cont')).toEqual([]);
    expect(parent.connectionCount).toBe(0);
    expect(await isSameProcess(child.identity)).toBe(true);
    expect(await exists(fleece)).toBe(true);
    expect(await exists(supervisorLogFile(paths, 'job-done'))).toBe(false);
  });

  it('does only what the journal says: a parent the job did not pause is not resumed, a reused child pid is not killed', async () => {
    const { init, child } = await journalInit('job-own');
    const { job, supervisor } = await startFakeJob('job-own', { ...init, halted: false, child: { ...child.identity, startTime: child.identity.startTime - 1 } });
    const supervisorIdentity = await processIdentity(supervisor);
    job.kill('SIGKILL');
    await waitFor(async () => !(await isSameProcess(supervisorIdentity)), 15_000);
    expect(parent.commandsNamed('cont')).toEqual([]);
    expect(await isSameProcess(child.identity)).toBe(true);
    expect(await exists(journalFile(paths, 'job-own'))).toBe(false);
  });
});
