import { stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { z } from 'zod';
import { ForksnapError } from '../errors.js';
import { qemuImgBinary } from '../snapshot/qemu-img.js';

/**
 * Preflight space check, before anything is started (the VM untouched): refuse with NO_SPACE when
 * the snapshot store cannot hold the images (estimated from what the disks have allocated: the
 * images are self-contained, so a disk's whole backing chain counts, and sparse stays sparse) or
 * when the fleecing storage (the job's work dir) has less free space than the reserve
 * (--space-reserve / FORKSNAP_SPACE_RESERVE_MIB, default 512 MiB). When both are on one
 * filesystem, it must hold the images and the reserve together.
 */
export const DEFAULT_SPACE_RESERVE_MIB = 512;
const MiB = 1024 * 1024;

export interface SpacePreflightInput {
  readonly disks: readonly { readonly id: string; readonly file: string }[];
  /** Where the images go (the snapshots dir; need not exist yet). */
  readonly storeDir: string;
  /** Where fleecing images go (the work root; need not exist yet). */
  readonly fleecingDir: string;
  /** Images per disk: 2 with --keep-crash-image. */
  readonly copies?: number;
  readonly reserveMiB?: number;
  readonly signal?: AbortSignal;
}

export interface SpaceReport {
  readonly imagesBytes: number;
  readonly perDisk: Record<string, number>;
  readonly storeFreeBytes: number;
  readonly fleecingFreeBytes: number;
  readonly reserveBytes: number;
  readonly sameFilesystem: boolean;
}

export function spaceReserveMiB(option?: number): number {
  if (option !== undefined) return option;
  const env = process.env.FORKSNAP_SPACE_RESERVE_MIB;
  if (env === undefined || env === '') return DEFAULT_SPACE_RESERVE_MIB;
  if (!/^\d+$/.test(env)) throw new ForksnapError('INVALID_INPUT', `FORKSNAP_SPACE_RESERVE_MIB must be a whole number of MiB, not "${env}"`, { env });
  return Number(env);
}

export async function checkSpace(input: SpacePreflightInput): Promise<SpaceReport> {
  const reserveBytes = spaceReserveMiB(input.reserveMiB) * MiB;
  const perDisk: Record<string, number> = {};
  for (const disk of input.disks) perDisk[disk.id] = (await allocatedBytes(disk.file, input.signal)) * (input.copies ?? 1);
  const imagesBytes = Object.values(perDisk).reduce((a, b) => a + b, 0);
  const store = await freeSpace(input.storeDir);
  const fleecing = await freeSpace(input.fleecingDir);
  const sameFilesystem = store.dev === fleecing.dev;
  const report = { imagesBytes, perDisk, storeFreeBytes: store.free, fleecingFreeBytes: fleecing.free, reserveBytes, sameFilesystem };
  const context = { ...report, storeDir: input.storeDir, fleecingDir: input.fleecingDir };
  const mib = (bytes: number) => `${Math.round(bytes / MiB)} MiB`;
  if (sameFilesystem ? imagesBytes + reserveBytes > store.free : imagesBytes > store.free) {
    throw new ForksnapError('NO_SPACE', `the snapshot store ${input.storeDir} has ${mib(store.free)} free; the images need about ${mib(imagesBytes)}${sameFilesystem ? ` plus the ${mib(reserveBytes)} reserve for the fleecing storage on the same filesystem` : ''}`, context);
  }
  if (fleecing.free < reserveBytes) {
    throw new ForksnapError('NO_SPACE', `the fleecing storage ${input.fleecingDir} has ${mib(fleecing.free)} free, less than the ${mib(reserveBytes)} reserve (FORKSNAP_SPACE_RESERVE_MIB)`, context);
  }
  return report;
}

const chainInfo = z.array(z.object({ filename: z.string(), 'actual-size': z.number().optional() }).loose());

/** Bytes allocated by an image and its backing chain (qemu-img info actual-size; st_blocks as fallback). */
export async function allocatedBytes(file: string, signal?: AbortSignal): Promise<number> {
  const result = await execa(qemuImgBinary(), ['info', '--output=json', '--backing-chain', '-U', file], { reject: false, cancelSignal: signal });
  if (signal?.aborted) throw signal.reason;
  if (result.exitCode === 0) {
    const chain = chainInfo.safeParse(JSON.parse(result.stdout));
    if (chain.success && chain.data.every((image) => image['actual-size'] !== undefined)) return chain.data.reduce((sum, image) => sum + image['actual-size']!, 0);
  }
  const info = await stat(file);
  return info.blocks * 512;
}

/** Free bytes as an unprivileged writer sees them (bavail): forksnap runs as root but leaves the root reserve to the host. */
async function freeSpace(dir: string): Promise<{ free: number; dev: number }> {
  const existing = await nearestExisting(dir);
  const [fs, info] = await Promise.all([statfs(existing), stat(existing)]);
  return { free: fs.bavail * fs.bsize, dev: info.dev };
}

async function nearestExisting(dir: string): Promise<string> {
  let current = path.resolve(dir);
  for (;;) {
    try {
      await stat(current);
      return current;
    } catch {
      const up = path.dirname(current);
      if (up === current) return current;
      current = up;
    }
  }
}
