import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { resolvePaths, type Paths } from '../../../src/config.js';
import type { ForksnapError } from '../../../src/errors.js';
import { newestPatchedBuild, parseQemuBase, patchedBuilds, resolveQemuBinary } from '../../../src/qemu/binary.js';

/** A cache dir laid out as scripts/build-qemu.sh leaves it (real files, an executable "binary"). */
let root: string;
let paths: Paths;
const savedEnv = { qemu: process.env.FORKSNAP_QEMU, base: process.env.FORKSNAP_QEMU_BASE };

async function fakeBuild(dir: string, info: Record<string, unknown>): Promise<string> {
  const prefix = path.join(paths.cacheDir, 'qemu', dir);
  await mkdir(path.join(prefix, 'bin'), { recursive: true });
  const binary = path.join(prefix, 'bin', 'qemu-system-x86_64');
  await writeFile(binary, '#!/bin/sh\n');
  await chmod(binary, 0o755);
  await writeFile(path.join(prefix, 'BUILD-INFO.json'), JSON.stringify(info));
  return binary;
}

beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'forksnap-binary-'));
  paths = resolvePaths({ stateDir: path.join(root, 'state'), cacheDir: path.join(root, 'cache') });
  delete process.env.FORKSNAP_QEMU;
  delete process.env.FORKSNAP_QEMU_BASE;
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
  for (const [key, value] of [['FORKSNAP_QEMU', savedEnv.qemu], ['FORKSNAP_QEMU_BASE', savedEnv.base]] as const) {
    if (value === undefined) delete process.env[key];
    else process.env[key] = value;
  }
});

describe('patched QEMU builds by base version', () => {
  it('picks the newest build of each base; a build without "base" is placed by its source version', async () => {
    const old72 = await fakeBuild('7.2+dfsg-7+deb12u18-1e186ce0acf7', { sourceVersion: '1:7.2+dfsg-7+deb12u18', builtAt: '2026-12-01T22:33:13Z' });
    const new72 = await fakeBuild('7.2+dfsg-7+deb12u18-aaaaaaaaaaaa', { base: '7.2', sourceVersion: '1:7.2+dfsg-7+deb12u18', builtAt: '2026-12-01T23:20:00Z' });
    const q10 = await fakeBuild('10.0.13+ds-0+deb13u1-bbbbbbbbbbbb', { base: '10.0', sourceVersion: '1:10.0.13+ds-0+deb13u1', builtAt: '2026-12-01T23:30:00Z' });
    await mkdir(path.join(paths.cacheDir, 'qemu', 'src'), { recursive: true }); // not a build
    expect(await newestPatchedBuild(paths, '7.2')).toBe(new72);
    expect(await newestPatchedBuild(paths, '10.0')).toBe(q10);
    expect(await newestPatchedBuild(paths)).toBe(new72); // the default base is 7.2, even though 10.0 is newer
    expect((await patchedBuilds(paths)).map((build) => [build.base, build.binary])).toEqual([['10.0', q10], ['7.2', new72], ['7.2', old72]]);
  });

  it('resolveQemuBinary: $FORKSNAP_QEMU wins, then the requested base, then $FORKSNAP_QEMU_BASE, then 7.2, then PATH', async () => {
    expect(await resolveQemuBinary(paths)).toBe('qemu-system-x86_64');
    const q72 = await fakeBuild('7.2+dfsg-7+deb12u18-aaaaaaaaaaaa', { base: '7.2', sourceVersion: '1:7.2+dfsg-7+deb12u18', builtAt: '2026-12-01T23:20:00Z' });
    const q10 = await fakeBuild('10.0.13+ds-0+deb13u1-bbbbbbbbbbbb', { base: '10.0', sourceVersion: '1:10.0.13+ds-0+deb13u1', builtAt: '2026-12-01T23:10:00Z' });
    expect(await resolveQemuBinary(paths)).toBe(q72);
    expect(await resolveQemuBinary(paths, { base: '10.0' })).toBe(q10);
    process.env.FORKSNAP_QEMU_BASE = '10.0';
    expect(await resolveQemuBinary(paths)).toBe(q10);
    expect(await resolveQemuBinary(paths, { base: '7.2' })).toBe(q72);
    process.env.FORKSNAP_QEMU = '/opt/qemu/bin/qemu-system-x86_64';
    expect(await resolveQemuBinary(paths, { base: '10.0' })).toBe('/opt/qemu/bin/qemu-system-x86_64');
  });

  it('an explicitly requested base that is not built is an error that says how to build it; an unknown base is bad input', async () => {
    await fakeBuild('7.2+dfsg-7+deb12u18-aaaaaaaaaaaa', { base: '7.2', sourceVersion: '1:7.2+dfsg-7+deb12u18' });
    const missing = await resolveQemuBinary(paths, { base: '10.0' }).then(() => undefined, (error: ForksnapError) => error);
    expect(missing?.code).toBe('QEMU_NOT_FOUND');
    expect(missing?.message).toMatch(/scripts\/build-qemu\.sh 10\.0/);
    process.env.FORKSNAP_QEMU_BASE = '9.2';
    const bad = await resolveQemuBinary(paths).then(() => undefined, (error: ForksnapError) => error);
    expect(bad?.code).toBe('INVALID_INPUT');
    expect(() => parseQemuBase('8.2', '--qemu-base')).toThrow(/supported: 7\.2, 10\.0/);
  });
});
