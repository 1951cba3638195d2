import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, EventClient, spawnDaemon, waitForJob, type DaemonProcess } from '../../helpers/daemon-process.js';
import { resultOf, runCli } from '../../helpers/forksnap-cli.js';
import { killLeftovers, processesMentioning } from '../../helpers/processes.js';
import { startGuestVm, type GuestVm } from '../../helpers/test-guest.js';

/**
 * The daemon as a separate process with two real test guests: the WebSocket event stream of a real
 * job (and a client that joins mid-job), per-VM queueing and cross-VM concurrency, the CLI through
 * the daemon, bad requests, and the TCP token. The guests boot once for the whole file.
 */
const TOKEN = 'daemon-test-token-0123456789abcdef';
const SLOW = 24 * 1024 * 1024; // bytes/s: the test guest sends ~90 MiB of RAM, so a capture of ~4 s: there is a "mid-job"

let dir: string;
let stateDir: string;
let daemon: DaemonProcess;
let vmA: GuestVm;
let vmB: GuestVm;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'forksnap-daemon-jobs-'));
  stateDir = path.join(dir, 'state');
  vmA = await startGuestVm({ name: 'dj-a', dir: path.join(dir, 'a'), stateDir, nic: false });
  vmB = await startGuestVm({ name: 'dj-b', dir: path.join(dir, 'b'), stateDir, nic: false });
  await writeFile(path.join(dir, 'token'), `${TOKEN}\n`);
  daemon = await spawnDaemon(stateDir, ['--listen', '127.0.0.1:0', '--token-file', path.join(dir, 'token'), '--max-concurrent-jobs', '2']);
});

afterAll(async () => {
  vmA?.control.close();
  vmB?.control.close();
  if (daemon) {
    daemon.signal('SIGTERM');
    await daemon.process;
  }
  for (const vm of ['dj-a', 'dj-b']) await runCli(['vm', 'stop', vm, '--no-daemon'], stateDir);
  const left = await killLeftovers(dir);
  await rm(dir, { recursive: true, force: true });
  expect(left, 'QEMU processes left running').toEqual([]);
});

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const PIPELINE = ['preflight', 'prepare', 'halt', 'disk-snapshot', 'capture', 'isolate', 'shutdown', 'materialise', 'finish', 'cleanup'];

describe('forksnap daemon: jobs and progress', () => {
  it('streams the full ordered event sequence of a real job, and a client joining mid-job gets the current state first', async () => {
    const early = await EventClient.unix(daemon.socket, 'job=*');
    await early.waitFor((m) => m.type === 'state');
    const submitted = await api(daemon, 'POST', '/v1/jobs', { vm: 'dj-a', strategy: 'fork', maxBandwidth: SLOW, labels: { purpose: 'events-test' } });
    expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
    const job = submitted.body.id as string;
    expect(submitted.body.status).toMatch(/queued|running/);

    await early.waitForEvent(job, 'phase-start', (event) => event.phase === 'capture');
    const late = await EventClient.unix(daemon.socket, `job=${job}`);
    const done = await early.waitFor((m) => m.type === 'event' && m.event.job === job && (m.event.type === 'job-done' || m.event.type === 'job-failed'), 120_000);
    expect(done.event.type, JSON.stringify(done.event)).toBe('job-done');
    await late.waitForEvent(job, 'job-done');

    // The early client: every event from seq 1, in order, typed.
    const events = early.events(job);
    expect(events.map((event) => event.seq)).toEqual(events.map((_, index) => index + 1));
    expect(events[0]).toMatchObject({ type: 'job-accepted', vm: 'dj-a', queuePosition: 0, trigger: 'api' });
    expect(events.at(-1)!.type).toBe('job-done');
    const started = events.find((event) => event.type === 'job-started');
    expect(started.strategy).not.toBe('precopy'); // the order below is the halt-then-migrate one
    const phaseStarts = events.filter((event) => event.type === 'phase-start').map((event) => event.phase);
    expect(phaseStarts).toEqual(PIPELINE);
    for (const phase of PIPELINE) {
      const start = events.findIndex((event) => event.type === 'phase-start' && event.phase === phase);
      const end = events.findIndex((event) => event.type === 'phase-end' && event.phase === phase);
      expect(end, `phase ${phase} ends after it starts`).toBeGreaterThan(start);
      expect(events.slice(start + 1, end).every((event) => event.type !== 'phase-start')).toBe(true);
    }
    const captureProgress = events.filter((event) => event.type === 'phase-progress' && event.phase === 'capture' && event.bytes !== undefined);
    expect(captureProgress.length).toBeGreaterThan(2);
    expect(captureProgress.every((event) => typeof event.percent === 'number' && event.totalBytes > 0)).toBe(true);
    expect(captureProgress.at(-1).bytes).toBeGreaterThan(captureProgress[0].bytes);
    const resumed = events.find((event) => event.type === 'parent-resumed');
    expect(resumed.downtimeMs).toBeGreaterThan(0);
    expect(resumed.downtimeMs).toBeLessThan(5000);
    const verdict = events.find((event) => event.type === 'verdict');
    expect(verdict.consistency).toBe('clean');
    expect(events.indexOf(resumed)).toBeLessThan(events.indexOf(verdict));
    expect(done.event).toMatchObject({ consistency: 'clean', downtimeMs: resumed.downtimeMs });

    // The late client: the job's state first (mid-capture or later), then the events after it, gap-free.
    const [first, ...rest] = late.messages;
    expect(first.type).toBe('state');
    expect(first.jobs).toHaveLength(1);
    const state = first.jobs[0];
    expect(state).toMatchObject({ id: job, vm: 'dj-a', status: 'running' });
    const captureSeq = events.find((event) => event.type === 'phase-start' && event.phase === 'capture').seq;
    expect(state.lastSeq).toBeGreaterThanOrEqual(captureSeq);
    expect(PIPELINE.indexOf(state.phase)).toBeGreaterThanOrEqual(PIPELINE.indexOf('capture'));
    const after = rest.filter((m) => m.type === 'event').map((m) => m.event);
    // The downtime is in the state if the parent had resumed when the client joined, else it follows.
    if (resumed.seq <= state.lastSeq) expect(state.downtimeMs).toBe(resumed.downtimeMs);
    else expect(after.find((event) => event.type === 'parent-resumed')?.downtimeMs).toBe(resumed.downtimeMs);
    expect(after.map((event) => event.seq)).toEqual(events.filter((event) => event.seq > state.lastSeq).map((event) => event.seq));
    expect(after.at(-1).type).toBe('job-done');

    const record = await waitForJob(daemon, job);
    expect(record).toMatchObject({ status: 'succeeded', consistency: 'clean', downtimeMs: resumed.downtimeMs, snapshotId: done.event.snapshotId });
    expect(record.snapshot.labels).toEqual({ purpose: 'events-test' });
    early.close();
    late.close();
  });

  it('runs two jobs on one VM one after the other, and jobs on two VMs at the same time', async () => {
    const client = await EventClient.unix(daemon.socket, 'job=*');
    const a1 = (await api(daemon, 'POST', '/v1/jobs', { vm: 'dj-a', strategy: 'fork', maxBandwidth: SLOW })).body;
    const a2 = (await api(daemon, 'POST', '/v1/jobs', { vm: 'dj-a', strategy: 'fork', maxBandwidth: SLOW })).body;
    const b1 = (await api(daemon, 'POST', '/v1/jobs', { vm: 'dj-b', strategy: 'fork', maxBandwidth: SLOW })).body;
    expect([a1.status, a2.status, b1.status]).toEqual(['running', 'queued', 'running']);
    const [ra1, ra2, rb1] = [await waitForJob(daemon, a1.id), await waitForJob(daemon, a2.id), await waitForJob(daemon, b1.id)];
    for (const record of [ra1, ra2, rb1]) expect(record.status, JSON.stringify(record.error)).toBe('succeeded');
    const span = (id: string) => {
      const events = client.events(id);
      return { start: Date.parse(events.find((e) => e.type === 'phase-start').time), end: Date.parse(events.find((e) => e.type === 'job-done').time), accepted: events[0] };
    };
    const [sa1, sa2, sb1] = [span(a1.id), span(a2.id), span(b1.id)];
    expect(sa2.accepted.queuePosition).toBeGreaterThan(0);
    expect(sa2.start, 'the second job on dj-a starts after the first one ended').toBeGreaterThanOrEqual(sa1.end);
    expect(sb1.start, 'the job on dj-b starts before the first dj-a job ends').toBeLessThan(sa1.end);
    expect(sa1.start, 'and the first dj-a job starts before the dj-b job ends').toBeLessThan(sb1.end);
    client.close();
  });

  it('gives the CLI the same JSON lines through the daemon as in-process', async () => {
    const viaDaemon = await runCli(['snapshot', 'create', 'dj-b', '--json', '--label', 'via=daemon'], stateDir);
    const inProcess = await runCli(['snapshot', 'create', 'dj-b', '--json', '--label', 'via=cli', '--no-daemon'], stateDir);
    for (const run of [viaDaemon, inProcess]) expect(run.exitCode, run.stderr.slice(-2000)).toBe(0);
    const shape = (lines: Record<string, any>[]) => lines.filter((line) => line.type !== 'phase-progress').map((line) => [line.type, line.phase ?? line.consistency ?? line.trigger ?? ''].join(':'));
    expect(shape(viaDaemon.lines)).toEqual(shape(inProcess.lines));
    expect(viaDaemon.lines[0]).toMatchObject({ type: 'job-accepted', trigger: 'cli' });
    const [daemonResult, localResult] = [resultOf(viaDaemon), resultOf(inProcess)];
    const results = [daemonResult, localResult];
    expect(Object.keys(daemonResult).sort()).toEqual(Object.keys(localResult).sort());
    expect(results.map((meta) => meta.labels.via)).toEqual(['daemon', 'cli']);
    // The daemon ran the first one: it knows it as a job.
    const jobs = (await api(daemon, 'GET', '/v1/jobs?vm=dj-b')).body as any[];
    expect(jobs.some((job) => job.snapshotId === daemonResult.id && job.trigger === 'cli')).toBe(true);

    for (const args of [['snapshot', 'list', '--json'], ['vm', 'list', '--json'], ['snapshot', 'show', daemonResult.id, '--json']]) {
      const [remote, local] = [await runCli(args, stateDir), await runCli([...args, '--no-daemon'], stateDir)];
      expect(remote.stdout, args.join(' ')).toBe(local.stdout);
    }
    const [missingRemote, missingLocal] = [await runCli(['snapshot', 'create', 'no-such-vm', '--json'], stateDir), await runCli(['snapshot', 'create', 'no-such-vm', '--json', '--no-daemon'], stateDir)];
    expect(missingRemote.exitCode).toBe(4);
    expect(missingRemote.exitCode).toBe(missingLocal.exitCode);
    expect(missingRemote.stdout).toBe(missingLocal.stdout);
  });

  it('answers bad requests with a 4xx and a clear code, and keeps serving', async () => {
    const cases: [string, string, unknown, number, string][] = [
      ['POST', '/v1/jobs', '{"vm": "dj-a",', 400, 'INVALID_JSON'],
      ['POST', '/v1/jobs', { vm: 42 }, 400, 'INVALID_INPUT'],
      ['POST', '/v1/jobs', { vm: 'dj-a', shutdownTimeoutSeconds: 'soon' }, 400, 'INVALID_INPUT'],
      ['POST', '/v1/jobs', { vm: 'dj-a', surprise: true }, 400, 'INVALID_INPUT'],
      ['POST', '/v1/jobs', [1, 2], 400, 'INVALID_INPUT'],
      ['POST', '/v1/jobs', undefined, 400, 'INVALID_INPUT'],
      ['POST', '/v1/jobs', { vm: 'no-such-vm' }, 404, 'VM_NOT_FOUND'],
      ['POST', '/v1/jobs', { vm: '../../etc' }, 400, 'INVALID_NAME'],
      ['POST', '/v1/jobs', { vm: 'dj-a', snapshotId: '../../../tmp/x' }, 400, 'INVALID_NAME'],
      ['GET', '/v1/snapshots/..%2F..%2Fetc%2Fpasswd', undefined, 400, 'INVALID_NAME'],
      ['GET', '/v1/vms/..%2Fvms', undefined, 400, 'INVALID_NAME'],
      ['DELETE', '/v1/snapshots/%2e%2e', undefined, 404, 'ROUTE_NOT_FOUND'], // "%2e%2e" is "..": the URL resolves to /v1/
      ['GET', '/v1/snapshots/../../etc/passwd', undefined, 404, 'ROUTE_NOT_FOUND'],
      ['GET', '/v1/snapshots/no-such-snapshot', undefined, 404, 'SNAPSHOT_NOT_FOUND'],
      ['GET', '/v1/jobs/does-not-exist', undefined, 404, 'JOB_NOT_FOUND'],
      ['GET', '/v1/jobs?status=sleeping', undefined, 400, 'INVALID_INPUT'],
      ['POST', '/v1/jobs', 'x'.repeat(100_000), 413, 'BODY_TOO_LARGE'],
      ['GET', '/v2/jobs', undefined, 404, 'ROUTE_NOT_FOUND'],
      ['PUT', '/v1/jobs', undefined, 405, 'METHOD_NOT_ALLOWED'],
      ['GET', '/v1/events', undefined, 400, 'INVALID_INPUT'],
    ];
    for (const [method, url, body, status, code] of cases) {
      const answer = await api(daemon, method, url, body);
      expect({ method, url, status: answer.status, code: answer.body?.error?.code }).toEqual({ method, url, status, code });
      expect(answer.body.error.message.length).toBeGreaterThan(10);
    }
    const ws = await EventClient.unix(daemon.socket, '');
    ws.send('{not json');
    ws.send({ type: 'subscribe', job: 'no-such-job' });
    await ws.waitFor((m) => m.type === 'error' && m.code === 'JOB_NOT_FOUND');
    expect(ws.messages[0]).toMatchObject({ type: 'error', code: 'INVALID_INPUT' });
    ws.close();
    const health = await api(daemon, 'GET', '/v1/health');
    expect(health).toMatchObject({ status: 200, body: { ok: true } });
    expect(daemon.process.exitCode).toBeNull();
  });

  it('serves TCP only with the bearer token, and exposes Prometheus metrics', async () => {
    const tcp = daemon.tcp!;
    expect(tcp.host).toBe('127.0.0.1');
    const anonymous = await api(tcp, 'GET', '/v1/vms');
    expect(anonymous.status).toBe(401);
    expect(anonymous.body.error.code).toBe('UNAUTHORIZED');
    expect((await api(tcp, 'GET', '/v1/vms', undefined, { authorization: 'Bearer wrong-token-wrong-token' })).status).toBe(401);
    expect((await api(tcp, 'POST', '/v1/jobs', { vm: 'dj-a' })).status).toBe(401);
    expect((await api(tcp, 'GET', '/metrics')).status).toBe(401);
    await expect(EventClient.connect(`ws://127.0.0.1:${tcp.port}/v1/events?job=*`)).rejects.toThrow(/401/);
    const authorised = await api(tcp, 'GET', '/v1/vms', undefined, { authorization: `Bearer ${TOKEN}` });
    expect(authorised.status).toBe(200);
    expect(authorised.body.map((vm: any) => vm.name).sort()).toEqual(['dj-a', 'dj-b']);
    const ws = await EventClient.connect(`ws://127.0.0.1:${tcp.port}/v1/events?job=*`, { authorization: `Bearer ${TOKEN}` });
    await ws.waitFor((m) => m.type === 'state');
    ws.close();

    const metrics = await api(tcp, 'GET', '/metrics', undefined, { authorization: `Bearer ${TOKEN}` });
    expect(metrics.status).toBe(200);
    const text = String(metrics.body);
    const value = (pattern: RegExp) => Number(pattern.exec(text)?.[1] ?? Number.NaN);
    expect(value(/^forksnap_jobs_total\{outcome="succeeded",trigger="api"\} (\d+)/m)).toBeGreaterThanOrEqual(4);
    expect(value(/^forksnap_jobs_total\{outcome="succeeded",trigger="cli"\} (\d+)/m)).toBeGreaterThanOrEqual(1);
    // One series per strategy (the API jobs here ask for fork, the CLI's auto picks fork-postcopy): their sum.
    const downtimes = [...text.matchAll(/^forksnap_parent_downtime_seconds_count\{strategy="[^"]+"\} (\d+)/gm)].reduce((sum, match) => sum + Number(match[1]), 0);
    expect(downtimes).toBeGreaterThanOrEqual(5);
    expect(value(/^forksnap_phase_duration_seconds_count\{phase="capture"\} (\d+)/m)).toBeGreaterThanOrEqual(5);
    expect(value(/^forksnap_snapshot_bytes_total\{vm="dj-a"\} (\d+)/m)).toBeGreaterThan(1_000_000);
    expect(text).toMatch(/^forksnap_jobs_running 0$/m);
  });

  it('shows a job\'s progress advancing and its final label on the web page (headless Chromium)', async () => {
    const tcp = daemon.tcp!;
    const profile = await mkdtemp(path.join(dir, 'chromium-profile-'));
    const browser = await chromium.launchPersistentContext(profile, { executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
    try {
      const page = browser.pages()[0] ?? (await browser.newPage());
      await page.goto(`http://127.0.0.1:${tcp.port}/#token=${TOKEN}`);
      await page.locator('#conn.ok').waitFor({ timeout: 30_000 });
      expect(page.url(), 'the token is taken out of the address bar').not.toContain(TOKEN);
      await expect.poll(() => page.locator('#vms tbody tr').count()).toBe(2);
      // Sample what the page shows, every 20 ms, for every job row.
      // (browser code as a string: the tests are type-checked without the DOM library)
      await page.evaluate(`window.seen = {};
        setInterval(() => {
          for (const row of document.querySelectorAll('#jobs tbody tr')) {
            const value = row.querySelector('progress').value;
            const list = (window.seen[row.id] ??= []);
            if (list.at(-1) !== value) list.push(value);
          }
        }, 20);`);
      const id = (await api(daemon, 'POST', '/v1/jobs', { vm: 'dj-a', strategy: 'fork', maxBandwidth: SLOW })).body.id as string;
      const row = page.locator(`#job-${id}`);
      await expect.poll(() => row.locator('.label').textContent(), { timeout: 120_000 }).toBe('clean');
      await expect.poll(() => row.locator('.status').textContent()).toBe('succeeded');
      const seen = (await page.evaluate(`window.seen['job-${id}'] ?? []`)) as number[];
      expect(seen.length, `progress values shown: ${seen.join(', ')}`).toBeGreaterThanOrEqual(5);
      expect(seen.every((value, index) => index === 0 || value > seen[index - 1]!), `progress only advances: ${seen.join(', ')}`).toBe(true);
      expect(seen[0]).toBeLessThan(50);
      expect(seen.at(-1)).toBe(100);
      const record = await waitForJob(daemon, id);
      expect(await row.locator('.downtime').textContent()).toBe(`${record.downtimeMs} ms`);
      const snapshotRow = page.locator(`#snapshots tr[data-snapshot="${record.snapshotId}"]`);
      await expect.poll(() => snapshotRow.count()).toBe(1);
      expect(await snapshotRow.locator('td').nth(3).textContent()).toBe('clean');
      expect(await snapshotRow.locator('td').nth(4).textContent()).toBe(`${record.downtimeMs} ms`);
      await page.screenshot({ path: path.join(process.env.FORKSNAP_TEST_SCREENSHOTS ?? dir, 'daemon-web-page.png'), fullPage: true });
    } finally {
      await browser.close();
    }
  });

  it('leaves no child QEMU behind after all that', async () => {
    const running = await processesMentioning(dir);
    expect(running.filter((proc) => proc.argv.includes('-incoming'))).toEqual([]);
    expect(running).toHaveLength(2);
  });
});
