import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { dir } from 'tmp-promise';
import { describe, expect, it } from 'vitest';
import { ForksnapError } from '../../../src/errors.js';
import { loadDaemonConfig, parseDaemonConfig } from '../../../src/server/load-config.js';

function configError(text: string, file = 'forksnap.yaml'): ForksnapError {
  try {
    parseDaemonConfig(text, file);
  } catch (error) {
    expect(error).toBeInstanceOf(ForksnapError);
    expect((error as ForksnapError).code).toBe('CONFIG_INVALID');
    return error as ForksnapError;
  }
  throw new Error('the config was accepted');
}

describe('daemon config', () => {
  it('fills in defaults for an empty file', () => {
    const config = parseDaemonConfig('', 'empty.yaml');
    expect(config).toMatchObject({ server: { maxBodyBytes: 65536 }, jobs: { maxConcurrent: 2, shutdownGraceSeconds: 30 }, hooks: { pre: [], post: [] }, vms: {} });
  });

  it('reads a full YAML config', () => {
    const config = parseDaemonConfig(`
server:
  socket: /run/forksnap.sock
  tcp: { host: 0.0.0.0, port: 8470, tokenFile: /etc/forksnap/token }
jobs: { maxConcurrent: 3 }
hooks:
  post:
    - command: [/usr/local/bin/notify, --quiet]
vms:
  db1:
    hooks:
      pre: [{ command: "psql -c CHECKPOINT", shell: true, timeoutSeconds: 30 }]
    schedules:
      - name: nightly
        cron: "0 2 * * *"
        timezone: Europe/Berlin
        missedRuns: skip
        retention: { keepLast: 3, daily: 7, weekly: 4, monthly: 12 }
        job: { strategy: fork, shutdownTimeoutSeconds: 300, labels: { tier: db } }
`, 'full.yaml');
    expect(config.server.tcp).toEqual({ host: '0.0.0.0', port: 8470, tokenFile: '/etc/forksnap/token' });
    expect(config.vms.db1!.schedules[0]).toMatchObject({ timezone: 'Europe/Berlin', missedRuns: 'skip', retention: { monthly: 12 }, job: { strategy: 'fork', diskBackend: 'auto', labels: { tier: 'db' } } });
    expect(config.vms.db1!.hooks.pre[0]).toMatchObject({ shell: true, timeoutSeconds: 30, runOnFailure: false });
  });

  it('accepts the shipped example config', async () => {
    const { config } = await loadDaemonConfig(path.join(import.meta.dirname, '../../../packaging/forksnap.example.yaml'));
    expect(config.vms.db1!.schedules[0]).toMatchObject({ name: 'nightly', cron: '0 2 * * *', timezone: 'Europe/Berlin', retention: { keepLast: 3, daily: 7, weekly: 4, monthly: 12 } });
    expect(config.vms.db1!.hooks.post[0]).toMatchObject({ shell: true, timeoutSeconds: 3600 });
  });

  it('points every mistake at its line, column and key', () => {
    const error = configError(`server:
  tcp:
    host: 127.0.0.1
  sockett: /x
jobs:
  maxConcurrent: "2"
vms:
  db1:
    schedules:
      - name: nightly
        cron: "0 25 * * *"
        timezone: Europe/Berlinn
    hooks:
      pre:
        - command: "echo hi"
`);
    const lines = error.message.split('\n').slice(1).map((line) => line.trim());
    expect(lines).toEqual([
      'forksnap.yaml:3:5 server.tcp.port: Invalid input: expected number, received undefined',
      'forksnap.yaml:4:3 server.sockett: unknown key "sockett" (allowed here: check the spelling against docs/daemon.md)',
      'forksnap.yaml:6:18 jobs.maxConcurrent: Invalid input: expected number, received string',
      expect.stringMatching(/^forksnap\.yaml:11:15 vms\.db1\.schedules\[0\]\.cron: invalid cron expression "0 25 \* \* \*": .*hour/),
      'forksnap.yaml:12:19 vms.db1.schedules[0].timezone: not an IANA time zone (e.g. "Europe/Berlin", "UTC")',
      expect.stringMatching(/^forksnap\.yaml:15:20 vms\.db1\.hooks\.pre\[0\]\.command: a command given as one string needs "shell: true"/),
    ]);
    expect(error.context.issues).toContainEqual({ path: 'server.sockett', line: 4, column: 3, message: expect.any(String) });
  });

  it('reports JSON files with line numbers too, and YAML syntax errors', () => {
    expect(configError('{\n  "jobs": {"maxConcurrent": 0},\n  "x": 1\n}', 'c.json').message).toMatch(/c\.json:2:29 jobs\.maxConcurrent: Too small.*\n.*c\.json:3:3 x: unknown key "x" \(allowed here: server, jobs, hooks, vms\)/);
    expect(configError('a: [1\nb: 2', 'bad.yaml').message).toMatch(/bad\.yaml:2:1 /);
    expect(configError('jobs: {}\njobs: {}', 'dup.yaml').message).toMatch(/dup\.yaml:2:1 Map keys must be unique/);
  });

  it('refuses a schedule name used twice and bad names', () => {
    expect(configError('vms:\n  db1:\n    schedules:\n      - { name: n, cron: "0 2 * * *" }\n      - { name: n, cron: "0 3 * * *" }\n').message).toMatch(/schedules\[1\]\.name: schedule name "n" is used twice/);
    expect(configError('vms:\n  "../etc":\n    schedules: []\n').message).toMatch(/vms\.\.\.\/etc: invalid key/);
  });

  it('uses no file when none is given and the default is absent, but refuses a missing explicit one', async () => {
    const previous = process.env.FORKSNAP_CONFIG;
    delete process.env.FORKSNAP_CONFIG;
    try {
      const tmp = await dir({ unsafeCleanup: true });
      await expect(loadDaemonConfig(path.join(tmp.path, 'nope.yaml'))).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
      await writeFile(path.join(tmp.path, 'ok.json'), '{"jobs": {"maxConcurrent": 4}}');
      expect((await loadDaemonConfig(path.join(tmp.path, 'ok.json'))).config.jobs.maxConcurrent).toBe(4);
      await tmp.cleanup();
    } finally {
      if (previous !== undefined) process.env.FORKSNAP_CONFIG = previous;
    }
  });
});
