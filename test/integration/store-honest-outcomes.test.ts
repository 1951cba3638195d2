import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { resultOf, runCli } from '../helpers/forksnap-cli.js';
import { vmStatus } from '../helpers/qmp.js';
import { useSharedGuest } from '../helpers/shared-guest.js';

/**
 * Honest outcomes (issue 12, item 3) with a real guest that ignores the power button, so every
 * snapshot of it is crash-consistent: `snapshot create` exits 6 (kept, not clean); with
 * --require-clean it fails with NOT_CLEAN (exit 7) and keeps nothing; an in-process CLI job runs the
 * hooks of the config file as a daemon job would.
 */
const STOCK_QEMU = { FORKSNAP_QEMU: '/usr/bin/qemu-system-x86_64' };

describe('crash-consistent outcomes', () => {
  const guest = useSharedGuest('honest', { diskFormat: 'qcow2', append: 'fsnap.workload=1 fsnap.nobutton=1', env: () => STOCK_QEMU });

  async function withHooks(): Promise<{ env: Record<string, string>; log: string }> {
    const log = path.join(guest.root, 'hooks.log');
    const config = path.join(guest.root, 'config.yaml');
    const record = (stage: string) => `{ command: ["/bin/sh", "-c", "env | grep ^FORKSNAP_ | sort | sed 's/^/${stage} /' >> ${log}"], runOnFailure: ${stage === 'post' ? 'true' : 'false'} }`;
    await writeFile(config, `hooks:\n  pre: [${record('pre').replace(', runOnFailure: false', '')}]\n  post: [${record('post')}]\n`);
    await writeFile(log, '');
    return { env: { FORKSNAP_CONFIG: config }, log };
  }

  it('exits 6 for a kept crash-consistent snapshot, and runs the configured hooks in-process', async () => {
    const { env, log } = await withHooks();
    const started = performance.now();
    const cli = await runCli(['snapshot', 'create', 'honest', '--json', '--name', 'crash-1', '--shutdown-timeout', '3'], guest.state, env);
    console.log(`crash-consistent snapshot: exit ${cli.exitCode} after ${Math.round(performance.now() - started)} ms`);
    expect(cli.exitCode, cli.stderr).toBe(6);
    const meta = resultOf(cli);
    expect(meta.consistency).toBe('crash-consistent');
    expect(cli.lines.find((line) => line.type === 'job-done')).toMatchObject({ consistency: 'crash-consistent' });
    expect(cli.lines.filter((line) => line.type === 'hook').map((line) => [line.stage, line.ok])).toEqual([['pre', true], ['post', true]]);
    const hooks = await readFile(log, 'utf8');
    expect(hooks).toMatch(/^pre FORKSNAP_TRIGGER=cli$/m);
    expect(hooks).toMatch(/^post FORKSNAP_CONSISTENCY=crash-consistent$/m);
    expect(hooks).toMatch(/^post FORKSNAP_SNAPSHOT_ID=crash-1$/m);
    expect((await runCli(['snapshot', 'show', 'crash-1', '--json'], guest.state)).exitCode).toBe(0);
  });

  it('with --require-clean fails with NOT_CLEAN (exit 7) and keeps nothing; post hooks see the failure', async () => {
    const { env, log } = await withHooks();
    const cli = await runCli(['snapshot', 'create', 'honest', '--json', '--name', 'crash-2', '--shutdown-timeout', '3', '--require-clean'], guest.state, env);
    expect(cli.exitCode, cli.stderr).toBe(7);
    expect(cli.lines.find((line) => line.type === 'job-failed')).toMatchObject({ code: 'NOT_CLEAN' });
    expect(cli.lines.find((line) => 'error' in line)).toMatchObject({ error: { code: 'NOT_CLEAN' } });
    expect(cli.lines.some((line) => line.type === 'job-done' || line.type === 'result')).toBe(false);
    // Nothing kept: no snapshot directory, no partial one, not listed.
    expect((await readdir(path.join(guest.state, 'snapshots'))).filter((name) => name.includes('crash-2'))).toEqual([]);
    const list = await runCli(['snapshot', 'list', '--json'], guest.state);
    expect((JSON.parse(list.stdout) as { id: string }[]).map((entry) => entry.id)).toEqual(['crash-1']);
    const hooks = await readFile(log, 'utf8');
    expect(hooks).toMatch(/^post FORKSNAP_STATUS=failed$/m);
    expect(hooks).toMatch(/^post FORKSNAP_ERROR_CODE=NOT_CLEAN$/m);
    expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
  });

  it('a failing pre hook in-process stops the job before the halt (exit 5), as in the daemon', async () => {
    const config = path.join(guest.root, 'failing.yaml');
    await writeFile(config, 'hooks:\n  pre: [{ command: ["/bin/false"] }]\n');
    const cli = await runCli(['snapshot', 'create', 'honest', '--json', '--name', 'never'], guest.state, { FORKSNAP_CONFIG: config });
    expect(cli.exitCode, cli.stderr).toBe(5);
    expect(cli.lines.some((line) => line.type === 'phase-start')).toBe(false);
    expect((await readdir(path.join(guest.state, 'snapshots'))).filter((name) => name.includes('never'))).toEqual([]);
  });
});
