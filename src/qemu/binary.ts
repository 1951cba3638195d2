import { access, readdir, readFile, stat } from 'node:fs/promises';
import { constants } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { qemuBuildsDir, type Paths } from '../config.js';
import { ForksnapError } from '../errors.js';

/**
 * The QEMU versions forksnap builds a patched QEMU for (scripts/build-qemu.sh 7.2|10.0,
 * patches/qemu-<base>/): Debian 12's 7.2 and Debian 13's 10.0.
 */
export const QEMU_BASES = ['7.2', '10.0'] as const;
export type QemuBase = (typeof QEMU_BASES)[number];
/** What scripts/build-qemu.sh builds without an argument, and what forksnap picks unless told. */
export const DEFAULT_QEMU_BASE: QemuBase = '7.2';

export function parseQemuBase(text: string, source: string): QemuBase {
  if ((QEMU_BASES as readonly string[]).includes(text)) return text as QemuBase;
  throw new ForksnapError('INVALID_INPUT', `${source}: unknown QEMU base "${text}" (supported: ${QEMU_BASES.join(', ')})`, { source, value: text, supported: QEMU_BASES });
}

/**
 * The qemu-system-x86_64 that `forksnap vm start` uses, in this order:
 *   1. $FORKSNAP_QEMU (an explicit binary);
 *   2. the newest patched build of the requested base (`base`, e.g. from `vm start --qemu-base`,
 *      else $FORKSNAP_QEMU_BASE) under <cache>/qemu/<version>-<hash>/ (scripts/build-qemu.sh);
 *      a base asked for explicitly must have been built;
 *   3. without an explicit base, the newest patched 7.2 build, else qemu-system-x86_64 on PATH
 *      (stock QEMU: background-snapshot and precopy).
 * A child QEMU always runs the parent's own binary (/proc/PID/exe), never this choice. What a QEMU
 * can do is always asked of the running QEMU (query-version, query-migrate-capabilities), never
 * inferred from this choice.
 */
export async function resolveQemuBinary(paths: Paths, options: { base?: QemuBase } = {}): Promise<string> {
  if (process.env.FORKSNAP_QEMU) return process.env.FORKSNAP_QEMU;
  const explicit = options.base ?? (process.env.FORKSNAP_QEMU_BASE ? parseQemuBase(process.env.FORKSNAP_QEMU_BASE, 'FORKSNAP_QEMU_BASE') : undefined);
  const base = explicit ?? DEFAULT_QEMU_BASE;
  const patched = await newestPatchedBuild(paths, base);
  if (patched) return patched;
  if (explicit) {
    throw new ForksnapError('QEMU_NOT_FOUND', `no patched QEMU ${base} is built under ${qemuBuildsDir(paths)}: run \`bash scripts/build-qemu.sh ${base}\``, { base, dir: qemuBuildsDir(paths) });
  }
  return 'qemu-system-x86_64';
}

const buildInfoSchema = z.object({
  base: z.string().optional(),
  sourceVersion: z.string(),
  patchHash: z.string().optional(),
  builtAt: z.string().optional(),
});

export interface PatchedBuild {
  readonly base: QemuBase | undefined;
  /** Debian source version, e.g. 1:10.0.13+ds-0+deb13u1 */
  readonly sourceVersion: string;
  readonly binary: string;
  readonly builtAtMs: number;
}

/** The base of a build: BUILD-INFO.json's "base", or (builds made before it was recorded) its source version. */
function baseOf(info: z.infer<typeof buildInfoSchema>): QemuBase | undefined {
  if (info.base && (QEMU_BASES as readonly string[]).includes(info.base)) return info.base as QemuBase;
  const upstream = info.sourceVersion.replace(/^\d+:/, '');
  return QEMU_BASES.find((base) => upstream.startsWith(`${base}.`) || upstream.startsWith(`${base}+`));
}

/** Every finished patched build in the cache (those with a BUILD-INFO.json and an executable binary). */
export async function patchedBuilds(paths: Paths): Promise<PatchedBuild[]> {
  const root = qemuBuildsDir(paths);
  let entries: string[] = [];
  try {
    entries = await readdir(root);
  } catch {
    return [];
  }
  const builds: PatchedBuild[] = [];
  for (const entry of entries) {
    if (entry.startsWith('.')) continue;
    const dir = path.join(root, entry);
    const binary = path.join(dir, 'bin', 'qemu-system-x86_64');
    try {
      await access(binary, constants.X_OK);
      const parsed = buildInfoSchema.safeParse(JSON.parse(await readFile(path.join(dir, 'BUILD-INFO.json'), 'utf8')));
      if (!parsed.success) continue;
      const builtAtMs = Date.parse(parsed.data.builtAt ?? '') || (await stat(binary)).mtimeMs;
      builds.push({ base: baseOf(parsed.data), sourceVersion: parsed.data.sourceVersion, binary, builtAtMs });
    } catch {
      // incomplete build, or not a build (logs/, src/, wheels/, apt-trixie/)
    }
  }
  return builds.sort((a, b) => b.builtAtMs - a.builtAtMs);
}

/** The newest patched build of `base` (default 7.2), or undefined. */
export async function newestPatchedBuild(paths: Paths, base: QemuBase = DEFAULT_QEMU_BASE): Promise<string | undefined> {
  return (await patchedBuilds(paths)).find((build) => build.base === base)?.binary;
}
