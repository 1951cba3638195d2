import { mkdtemp, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/forksnap-cli.js';
import { killLeftovers } from '../helpers/processes.js';
import { vmStatus, withQmp } from '../helpers/qmp.js';

/** Bad input gets a clear message and a non-zero exit, and changes nothing. Real CLI, real QEMU. */
describe('bad input is refused with a clear message and nothing changes', () => {
  let root: string;
  let state: string;

  beforeAll(async () => {
    root = await mkdtemp('/var/tmp/forksnap-input-');
    state = path.join(root, 'state');
  });

  afterAll(async () => {
    const left = await killLeftovers(root);
    expect(left, 'QEMU processes left behind').toEqual([]);
  });

  const spec = async (name: string, body: unknown) => {
    const file = path.join(root, name);
    await writeFile(file, typeof body === 'string' ? body : JSON.stringify(body));
    return file;
  };

  it.each([
    ['not JSON', '{"name": "a",', /not valid JSON/],
    ['missing memory', { name: 'a' }, /memoryMiB/],
    ['traversal in the name', { name: '../evil', memoryMiB: 64 }, /name: must be 1-64 characters/],
    ['unknown key', { name: 'a', memoryMiB: 64, bogus: 1 }, /bogus/],
    ['bad disk format', { name: 'a', memoryMiB: 64, disks: [{ id: 'd', path: 'x', format: 'vmdk' }] }, /disks\.0\.format/],
    ['missing disk file', { name: 'a', memoryMiB: 64, disks: [{ id: 'd', path: 'nope.raw', format: 'raw' }] }, /disks\.d\.path: file .*nope\.raw does not exist/],
  ])('vm start with a malformed spec (%s) → exit 2, INVALID_SPEC', async (_what, body, message) => {
    const cli = await runCli(['vm', 'start', await spec('bad.json', body)], state);
    expect(cli.exitCode).toBe(2);
    expect(cli.stderr).toMatch(/INVALID_SPEC/);
    expect(cli.stderr).toMatch(message);
    expect(await readdir(path.join(state, 'vms')).catch(() => [])).toEqual([]);
  });

  it('vm start with an unknown --qemu-base → exit 2, INVALID_INPUT naming the supported ones; attach needs exactly one of --qmp / --libvirt', async () => {
    const cli = await runCli(['vm', 'start', await spec('ok.json', { name: 'a', memoryMiB: 64 }), '--qemu-base', '9.9'], state);
    expect(cli.exitCode).toBe(2);
    expect(cli.stderr).toMatch(/INVALID_INPUT.*--qemu-base: unknown QEMU base "9\.9" \(supported: 7\.2, 10\.0\)/);
    for (const args of [['vm', 'attach', 'x'], ['vm', 'attach', 'x', '--qmp', '/tmp/q.sock', '--libvirt', 'dom'], ['vm', 'attach', 'x', '--qmp', '/tmp/q.sock', '--connect', 'qemu:///system']]) {
      const attach = await runCli(args, state);
      expect(attach.exitCode, args.join(' ')).toBe(2);
      expect(attach.stderr).toMatch(/INVALID_INPUT/);
    }
  });

  it('unknown VM → exit 4, VM_NOT_FOUND', async () => {
    const cli = await runCli(['snapshot', 'create', 'nosuch', '--json'], state);
    expect(cli.exitCode).toBe(4);
    expect(cli.stdout).toMatch(/"code":"VM_NOT_FOUND"/);
    expect(cli.stdout).toMatch(/forksnap vm list/);
  });

  it.each([
    [['snapshot', 'create', 'vm', '--name', '../../etc/x']],
    [['snapshot', 'show', '../x']],
    [['snapshot', 'delete', 'a/b']],
    [['vm', 'attach', '../x', '--qmp', '/tmp/none.sock']],
    [['snapshot', 'create', '..']],
  ])('path traversal in a name (%j) → exit 2, INVALID_NAME', async (args) => {
    const cli = await runCli(args, state);
    expect(cli.exitCode).toBe(2);
    expect(cli.stderr).toMatch(/INVALID_NAME/);
  });

  it.each([
    [['snapshot', 'create', 'vm', '--strategy', 'teleport'], /--strategy must be one of auto, fork, fork-postcopy, background-snapshot, precopy/],
    [['snapshot', 'create', 'vm', '--shutdown-timeout', 'soon'], /--shutdown-timeout must be a number/],
    [['snapshot', 'create', 'vm', '--label', 'no-equals'], /--label must be KEY=VALUE/],
    [['snapshot', 'create'], /missing VM/],
    [['vm', 'attach', 'x', '--qmp', '/tmp/x', '--pid', 'abc'], /--pid must be a process id/],
    [['snapshot', 'create', 'vm', '--frobnicate'], /Unknown option '--frobnicate'/],
  ])('bad options (%j) → exit 2 with what to fix', async (args, message) => {
    const cli = await runCli(args, state);
    expect(cli.exitCode).toBe(2);
    expect(cli.stderr).toMatch(message);
  });

  describe('a VM that is not running', () => {
    let qmpSocket: string;

    beforeAll(async () => {
      const started = await runCli(['vm', 'start', await spec('idle.json', { name: 'idle', memoryMiB: 64, accel: 'tcg' })], state);
      expect(started.exitCode, started.stderr).toBe(0);
      qmpSocket = path.join(state, 'vms', 'idle', 'qmp.sock');
    });

    it('paused by someone else → exit 3, VM_NOT_RUNNING, and it stays paused', async () => {
      await withQmp(qmpSocket, (qmp) => qmp.execute('stop'));
      const cli = await runCli(['snapshot', 'create', 'idle', '--json'], state);
      expect(cli.exitCode).toBe(3);
      const failed = cli.lines.find((line) => line.type === 'job-failed');
      expect(failed).toMatchObject({ code: 'VM_NOT_RUNNING' });
      expect(String(failed?.message)).toMatch(/is paused, not running/);
      expect((await vmStatus(qmpSocket)).status).toBe('paused');
      expect(await readdir(path.join(state, 'snapshots')).catch(() => [])).toEqual([]);
      await withQmp(qmpSocket, (qmp) => qmp.execute('cont'));
    });

    it('a running VM without writable disks → exit 3 (a refused precondition), nothing to snapshot', async () => {
      const cli = await runCli(['snapshot', 'create', 'idle', '--json'], state);
      expect(cli.exitCode).toBe(3);
      expect(cli.stdout).toMatch(/no writable disk/);
      expect(cli.lines.find((line) => line.type === 'job-failed')).toMatchObject({ code: 'VM_NO_WRITABLE_DISK' });
      expect((await vmStatus(qmpSocket)).status).toBe('running');
    });

    it('stopped → exit 3, VM_NOT_RUNNING; the VM list says stopped', async () => {
      const stop = await runCli(['vm', 'stop', 'idle'], state);
      expect(stop.exitCode, stop.stderr).toBe(0);
      const cli = await runCli(['snapshot', 'create', 'idle', '--json'], state);
      expect(cli.exitCode).toBe(3);
      expect(cli.lines.find((line) => line.type === 'job-failed')).toMatchObject({ code: 'VM_NOT_RUNNING' });
      const list = await runCli(['vm', 'list'], state);
      expect(list.stdout).toMatch(/^idle\s+started\s+\d+\s+stopped/m);
    });
  });
});
