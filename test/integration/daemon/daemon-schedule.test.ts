import { chmod, mkdir, mkdtemp, readFile, rm, writeFile, access } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolvePaths } from '../../../src/config.js';
import type { JobRecord } from '../../../src/jobs/job-record.js';
import { startDaemon, type DaemonHandle } from '../../../src/server/daemon.js';
import { parseDaemonConfig } from '../../../src/server/load-config.js';
import { listSnapshots, sha256File } from '../../../src/snapshot/store.js';
import { api, spawnDaemon, waitForJob, type DaemonProcess } from '../../helpers/daemon-process.js';
import { runCli } from '../../helpers/forksnap-cli.js';
import { ManualClock } from '../../helpers/manual-clock.js';
import { killLeftovers, processesMentioning } from '../../helpers/processes.js';
import { startGuestVm, type GuestVm } from '../../helpers/test-guest.js';

/**
 * Schedules, retention and hooks with a real guest. First the daemon runs in this process with a
 * clock the test moves by hand ("nightly at 02:00 Europe/Berlin" fires when the test says it is
 * 02:00), then as a separate process that catches up a run missed while it was down.
 */
let dir: string;
let stateDir: string;
let hookDir: string;
let vm: GuestVm;
let inProcess: DaemonHandle | undefined;
let spawned: DaemonProcess | undefined;

const PRE_HOOK = `#!/bin/sh
env | grep '^FORKSNAP_' | sort > "$HOOK_DIR/pre-$FORKSNAP_JOB_ID.env"
if [ -e "$HOOK_DIR/fail-pre" ]; then echo "pre hook refuses: fail-pre is there" >&2; exit 3; fi
`;
const POST_HOOK = `#!/bin/sh
env | grep '^FORKSNAP_' | sort > "$HOOK_DIR/post-$FORKSNAP_JOB_ID.env"
if [ -e "$HOOK_DIR/fail-post" ]; then echo "shipping failed: fail-post is there" >&2; exit 7; fi
cp "$FORKSNAP_IMAGE_DATA" "$HOOK_DIR/shipped-$FORKSNAP_SNAPSHOT_ID.img"
`;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'forksnap-daemon-schedule-'));
  stateDir = path.join(dir, 'state');
  hookDir = path.join(dir, 'hooks');
  await mkdir(hookDir, { recursive: true });
  for (const [name, text] of [['pre-hook.sh', PRE_HOOK], ['post-hook.sh', POST_HOOK]] as const) {
    await writeFile(path.join(dir, name), text);
    await chmod(path.join(dir, name), 0o755);
  }
  vm = await startGuestVm({ name: 'ds', dir: path.join(dir, 'vm'), stateDir, nic: false });
});

afterAll(async () => {
  vm?.control.close();
  await inProcess?.stop(5000);
  if (spawned && spawned.process.exitCode === null) {
    spawned.signal('SIGTERM');
    await spawned.process;
  }
  await runCli(['vm', 'stop', 'ds', '--no-daemon'], stateDir);
  const left = await killLeftovers(dir);
  await rm(dir, { recursive: true, force: true });
  expect(left, 'QEMU processes left running').toEqual([]);
});

function readEnvFile(text: string): Record<string, string> {
  return Object.fromEntries(text.trim().split('\n').map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
}

async function exists(file: string): Promise<boolean> {
  return access(file).then(() => true, () => false);
}

async function until<T>(probe: () => T | undefined | Promise<T | undefined>, what: string, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(100);
  }
}

describe('forksnap daemon: schedules, retention, hooks', () => {
  let clock: ManualClock;
  const nightly = (n: number) => until(() => {
    const jobs = inProcess!.engine.list().filter((job) => job.trigger === 'schedule');
    const job = jobs[n - 1];
    return job && ['succeeded', 'failed', 'cancelled'].includes(job.status) ? job : undefined;
  }, `scheduled job ${n}`);

  it('fires "nightly at 02:00 Europe/Berlin" when the clock says so, with the documented hook environment', async () => {
    const config = parseDaemonConfig(`# test config
hooks:
  post:
    - command: ["/bin/sh", "-c", "echo \\"$FORKSNAP_JOB_ID $FORKSNAP_STATUS\\" >> \\"$HOOK_DIR/global-post.log\\""]
      env: { HOOK_DIR: "${hookDir}" }
vms:
  ds:
    hooks:
      pre:
        - command: ["${dir}/pre-hook.sh"]
          env: { HOOK_DIR: "${hookDir}" }
        - command: 'echo "$FORKSNAP_VM via a shell" > "${hookDir}/shell-hook.txt"'
          shell: true
      post:
        - command: ["${dir}/post-hook.sh"]
          env: { HOOK_DIR: "${hookDir}" }
          timeoutSeconds: 60
    schedules:
      - name: nightly
        cron: "0 2 * * *"
        timezone: Europe/Berlin
        retention: { keepLast: 2 }
        job: { labels: { kind: nightly } }
`, 'test.yaml');
    clock = new ManualClock('2026-11-20T23:30:00Z'); // 00:30 in Berlin (CET, UTC+1)
    const log = pino({ level: 'info' }, pino.destination({ dest: path.join(dir, 'in-process-daemon.log'), sync: true }));
    inProcess = await startDaemon({ paths: resolvePaths({ stateDir, cacheDir: process.env.FORKSNAP_CACHE_DIR }), log, config, socketPath: path.join(stateDir, 'forksnap.sock'), clock });
    expect(inProcess.scheduler.list()).toMatchObject([{ vm: 'ds', name: 'nightly', nextRunAt: '2026-11-21T01:00:00.000Z' }]);

    await clock.advanceTo('2026-11-21T00:59:59Z');
    await delay(500);
    expect(inProcess.engine.list(), 'nothing at 01:59:59 Berlin time').toEqual([]);
    await clock.advanceTo('2026-11-21T01:00:00Z');
    const job = await nightly(1);
    expect(job, JSON.stringify(job.error)).toMatchObject({ status: 'succeeded', trigger: 'schedule', schedule: 'nightly', consistency: 'clean' });
    expect(job.snapshot!.labels).toEqual({ kind: 'nightly', 'forksnap.schedule': 'nightly', 'forksnap.slot': '2026-11-21T01:00:00.000Z' });
    expect(inProcess.scheduler.list()[0]!.nextRunAt).toBe('2026-11-22T01:00:00.000Z');

    const pre = readEnvFile(await readFile(path.join(hookDir, `pre-${job.id}.env`), 'utf8'));
    expect(pre).toEqual({
      FORKSNAP_HOOK: 'pre',
      FORKSNAP_VM: 'ds',
      FORKSNAP_JOB_ID: job.id,
      FORKSNAP_SNAPSHOT_ID: job.snapshotId,
      FORKSNAP_TRIGGER: 'schedule',
      FORKSNAP_SCHEDULE: 'nightly',
      FORKSNAP_STATE_DIR: stateDir,
    });
    const post = readEnvFile(await readFile(path.join(hookDir, `post-${job.id}.env`), 'utf8'));
    const meta = job.snapshot!;
    const snapshotDir = path.join(stateDir, 'snapshots', meta.id);
    const image = path.join(snapshotDir, meta.disks[0]!.image.file);
    expect(post).toEqual({
      ...pre,
      FORKSNAP_HOOK: 'post',
      FORKSNAP_STATUS: 'succeeded',
      FORKSNAP_SNAPSHOT_DIR: snapshotDir,
      FORKSNAP_META: path.join(snapshotDir, 'meta.json'),
      FORKSNAP_IMAGES: image,
      FORKSNAP_IMAGE_DATA: image,
      FORKSNAP_CONSISTENCY: 'clean',
      FORKSNAP_CONSISTENCY_REASON: meta.consistencyReason,
      FORKSNAP_DOWNTIME_MS: String(meta.parentDowntimeMs),
      FORKSNAP_STRATEGY: meta.strategy,
    });
    expect(await sha256File(path.join(hookDir, `shipped-${meta.id}.img`)), 'the post hook shipped the image').toBe(meta.disks[0]!.image.sha256);
    expect(await readFile(path.join(hookDir, 'shell-hook.txt'), 'utf8')).toBe('ds via a shell\n');
    expect(await readFile(path.join(hookDir, 'global-post.log'), 'utf8')).toBe(`${job.id} succeeded\n`);
    expect(job.hooks.map((hook) => `${hook.stage}:${hook.ok}`)).toEqual(['pre:true', 'pre:true', 'post:true', 'post:true']);
  });

  it('aborts before the halt when a pre hook fails, and reports a failing post hook, with exit code 5', async () => {
    await clock.advanceTo('2026-11-22T01:00:00Z');
    expect((await nightly(2)).status).toBe('succeeded');

    await writeFile(path.join(hookDir, 'fail-pre'), '');
    const refused = await runCli(['snapshot', 'create', 'ds', '--json'], stateDir);
    await rm(path.join(hookDir, 'fail-pre'));
    expect(refused.exitCode, refused.stderr).toBe(5);
    const types = refused.lines.map((line) => line.type ?? (line.error ? 'error' : '?'));
    expect(types).toEqual(['job-accepted', 'hook', 'job-failed', 'error']);
    expect(refused.lines[1]).toMatchObject({ stage: 'pre', ok: false, exitCode: 3 });
    expect(String(refused.lines[1]!.outputTail)).toContain('pre hook refuses');
    expect(refused.lines[3]).toMatchObject({ error: { code: 'HOOK_FAILED' } });
    expect(JSON.stringify(refused.lines[3])).toMatch(/not started \(the VM was not halted\)/);
    const refusedJob = String(refused.lines[0]!.job);
    expect(await exists(path.join(hookDir, `post-${refusedJob}.env`)), 'no post hook after a refused start').toBe(false);

    await writeFile(path.join(hookDir, 'fail-post'), '');
    const unshipped = await runCli(['snapshot', 'create', 'ds', '--json', '--name', 'ds-unshipped'], stateDir);
    await rm(path.join(hookDir, 'fail-post'));
    expect(unshipped.exitCode, unshipped.stderr).toBe(5);
    const error = unshipped.lines.at(-1)!.error as { code: string; message: string; context: Record<string, unknown> };
    expect(error.code).toBe('HOOK_FAILED');
    expect(error.message).toMatch(/exited 7: shipping failed.*ds-unshipped is complete and kept/);
    expect(error.context.snapshotId).toBe('ds-unshipped');
    expect((await listSnapshots(resolvePaths({ stateDir }))).map((meta) => meta.id)).toContain('ds-unshipped');
  });

  it('keeps the last two nightly snapshots and deletes the oldest, leaving other snapshots alone', async () => {
    const [first, second] = [await nightly(1), await nightly(2)];
    await clock.advanceTo('2026-11-23T01:00:00Z');
    const third = await nightly(3);
    expect(third.status).toBe('succeeded');
    const ids = await until(async () => {
      const list = (await listSnapshots(resolvePaths({ stateDir }))).map((meta) => meta.id);
      return list.includes(first.snapshotId!) ? undefined : list;
    }, 'retention to delete the first nightly snapshot', 10_000);
    expect(ids.sort()).toEqual(['ds-unshipped', second.snapshotId!, third.snapshotId!].sort());
  });

  it('runs a slot missed while the daemon was down once at start-up (run-once), and skips one whose policy says skip', async () => {
    await inProcess!.stop(5000);
    inProcess = undefined;
    const restartedAt = Date.now();
    const longAgo = new Date(restartedAt - 3 * 86_400_000).toISOString(); // the last slots handled: three days ago
    await writeFile(path.join(stateDir, 'daemon', 'schedules.json'), JSON.stringify({ 'ds/nightly': { lastSlot: longAgo }, 'ds/early': { lastSlot: longAgo } }));
    await writeFile(path.join(dir, 'missed.yaml'), `vms:
  ds:
    schedules:
      - { name: nightly, cron: "0 2 * * *", timezone: Europe/Berlin, missedRuns: run-once, missedRunMaxAgeHours: 48 }
      - { name: early, cron: "30 3 * * *", timezone: Europe/Berlin, missedRuns: skip }
`);
    spawned = await spawnDaemon(stateDir, ['--config', path.join(dir, 'missed.yaml')]);
    const catchUp = await until(async () => ((await api(spawned!, 'GET', '/v1/jobs?vm=ds')).body as JobRecord[]).find((job) => job.trigger === 'schedule' && job.createdAt > new Date(restartedAt).toISOString()), 'the catch-up job');
    expect(catchUp.schedule).toBe('nightly');
    const done = await waitForJob(spawned, catchUp.id);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    const schedules = (await api(spawned, 'GET', '/v1/schedules')).body as { name: string; lastSlot: string; lastJob?: string; nextRunAt: string }[];
    const [nightlyState, earlyState] = ['nightly', 'early'].map((name) => schedules.find((entry) => entry.name === name)!);
    expect(nightlyState!.lastJob).toBe(catchUp.id);
    expect(earlyState!.lastJob).toBeUndefined();
    expect(Date.parse(earlyState!.lastSlot)).toBeGreaterThan(Date.parse(longAgo));
    for (const entry of schedules) expect(Date.parse(entry.nextRunAt)).toBeGreaterThan(Date.now());
    expect(((await api(spawned, 'GET', '/v1/jobs?vm=ds')).body as JobRecord[]).filter((job) => job.schedule === 'early')).toEqual([]);
    spawned.signal('SIGTERM');
    expect((await spawned.process).exitCode).toBe(0);
    expect((await processesMentioning(dir)).filter((proc) => proc.argv.includes('-incoming'))).toEqual([]);
  });
});
