import { describe, expect, it } from 'vitest';
import { parseSandboxSpawnDenied } from '../../../src/qemu/sandbox-policy.js';

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
