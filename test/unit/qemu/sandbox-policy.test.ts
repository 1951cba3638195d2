import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { parseSandboxSpawnDenied, sandboxRefusesFork } from '../../../src/qemu/sandbox-policy.js';

describe('the -sandbox spawn policy from a QEMU command line', () => {
  it.each([
    [['-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny'], true],
    [['-sandbox', 'on'], false],
    [['-sandbox', 'enable=on,spawn=deny'], true],
    [['-sandbox', 'off,spawn=deny'], false],
    [['-sandbox', 'on,spawn=allow'], false],
    [['-sandbox=on,spawn=deny'], true],
    [['-sandbox', 'on,spawn=deny', '-sandbox', 'on'], false],
    [['-name', 'spawn=deny'], false],
    [[], false],
  ])('%j → spawn denied: %s', (argv, denied) => {
    expect(parseSandboxSpawnDenied(argv)).toBe(denied);
  });
});

describe('sandboxRefusesFork, read from a real process', () => {
  it('refuses fork for a process under spawn=deny whose binary has no forksnap BUILD-INFO.json, and says why', async () => {
    // A real process whose command line carries the sandbox option (node ignores the extra arguments).
    const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', '--', '-sandbox', 'on,obsolete=deny,spawn=deny'], { stdio: 'ignore' });
    try {
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(await sandboxRefusesFork(child.pid!, { major: 7, minor: 2 })).toMatch(/spawn=deny.*kill the VM \(SIGSYS, QEMU < 9\.0\)/);
      expect(await sandboxRefusesFork(child.pid!, { major: 10, minor: 0 })).toMatch(/be refused \(EPERM\)/);
      expect(await sandboxRefusesFork(process.pid, { major: 7, minor: 2 })).toBeUndefined();
    } finally {
      child.kill('SIGKILL');
    }
  });
});
