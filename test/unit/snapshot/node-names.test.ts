import { describe, expect, it } from 'vitest';
import { generatedName, QEMU_NAME_LIMIT } from '../../../src/snapshot/node-names.js';

/** QEMU's id_wellformed(): a letter, then letters, digits, "-", ".", "_". */
const QEMU_ID = /^[A-Za-z][A-Za-z0-9._-]*$/;

describe('generatedName', () => {
  it('keeps disks whose ids share a long prefix apart (the 31-character cut made them collide)', () => {
    const job = 'mioq2x1a3f9c2e';
    for (const [a, b] of [['drive-virtio-disk0', 'drive-virtio-disk1'], ['virtio-backend', 'virtio-backend-2'], ['libvirt-1-format', 'libvirt-2-format']] as const) {
      for (const role of ['overlay', 'commit', 'recover', 'fleece', 'cbw', 'export']) {
        const x = generatedName(role, job, a);
        const y = generatedName(role, job, b);
        expect(x).not.toBe(y);
        for (const name of [x, y]) {
          expect(name.length).toBeLessThanOrEqual(QEMU_NAME_LIMIT);
          expect(name).toMatch(QEMU_ID);
        }
      }
    }
  });

  it('is unique per (role, job, disk) across many combinations, and deterministic', () => {
    const names = new Set<string>();
    const disks = Array.from({ length: 50 }, (_, index) => `${'x'.repeat(40)}-${index}`);
    for (const role of ['overlay', 'commit']) for (const job of ['j1', 'j2', 'j3']) for (const disk of disks) names.add(generatedName(role, job, disk));
    expect(names.size).toBe(2 * 3 * 50);
    expect(generatedName('overlay', 'j1', 'dj')).toBe(generatedName('overlay', 'j1', 'dj'));
  });

  it('stays within the limit for the longest role and odd disk ids, and names its role for people', () => {
    for (const disk of ['', 'a', 'é€', 'a.b/c', 'z'.repeat(200)]) {
      const name = generatedName('abcdefghijkl', 'job', disk);
      expect(name.length).toBeLessThanOrEqual(QEMU_NAME_LIMIT);
      expect(name).toMatch(QEMU_ID);
      expect(name.startsWith('fs-abcdefghijkl-')).toBe(true);
    }
    expect(generatedName('overlay', 'job', 'dj')).toMatch(/^fs-overlay-dj-[0-9a-f]{12}$/);
  });

  it('refuses a role that could push the name over the limit', () => {
    expect(() => generatedName('a-role-that-is-far-too-long', 'job', 'd')).toThrow(/role/);
    expect(() => generatedName('Overlay', 'job', 'd')).toThrow(/role/);
  });
});
