import { execa } from 'execa';
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { errorMessage } from '../errors.js';
import { qemuImgBinary } from './qemu-img.js';
import { loadSnapshot, recordVerification, sha256File, type ImageView, type SnapshotView, type Verification, type VerificationCheck } from './store.js';
import { storageDaemonBinary } from './raw-views.js';
import { checkFilesystems } from './verify-filesystem.js';

/**
 * `forksnap snapshot verify ID`: re-reads a stored snapshot and checks it, read-only.
 *
 *   sha256           every image file (and, for an incremental image, every image of its backing
 *                    chain, against the meta.json of the snapshot that holds it) has the size and
 *                    checksum recorded when it was written
 *   qemu-img-check   qcow2 metadata is consistent (`qemu-img check`); raw has none ("not-checked")
 *   filesystem       the guest filesystems on each disk image (verify-filesystem.ts)
 *
 * The verdict is "passed" only when no check failed; it is recorded in meta.json (`verification`)
 * with the time, so `show`, the API and the web page carry it.
 */
export async function verifySnapshot(paths: Paths, id: string, options: { signal: AbortSignal; log: Logger }): Promise<{ snapshot: SnapshotView; verification: Verification }> {
  const started = Date.now();
  const view = await loadSnapshot(paths, id);
  const log = options.log.child({ snapshot: id });
  const checks: VerificationCheck[] = [];
  for (const disk of view.disks) {
    const images: { image: ImageView; role: string }[] = [{ image: disk.image, role: disk.image.file }];
    if (disk.crashImage) images.push({ image: disk.crashImage, role: disk.crashImage.file });
    for (const { image, role } of images) {
      checks.push(await checkChecksum(disk.id, role, image, options.signal));
      for (const link of await backingChain(paths, image)) checks.push(link.missing ? { ...link.missing, disk: disk.id } : await checkChecksum(disk.id, `backing ${link.snapshot}/${link.image.file}`, link.image, options.signal));
      checks.push(await checkQcow2(disk.id, role, image, options.signal));
    }
    // The crash-consistent image is expected to need journal recovery: only the snapshot image's filesystems are checked.
    const missing = await filesystemToolsMissing();
    if (missing) {
      checks.push({ disk: disk.id, check: 'filesystem', target: 'whole disk', status: 'not-checked', detail: missing });
      continue;
    }
    try {
      checks.push(...await checkFilesystems(disk.id, { file: disk.image.path, format: disk.image.format }, { signal: options.signal, log }));
    } catch (error) {
      if (options.signal.aborted) throw options.signal.reason;
      checks.push({ disk: disk.id, check: 'filesystem', target: 'whole disk', status: 'failed', detail: `could not read the image: ${errorMessage(error).slice(0, 600)}` });
    }
  }
  const verification: Verification = {
    verdict: checks.some((check) => check.status === 'failed') ? 'failed' : 'passed',
    at: new Date().toISOString(),
    durationMs: Date.now() - started,
    checks,
  };
  const snapshot = await recordVerification(paths, id, verification);
  log[verification.verdict === 'passed' ? 'info' : 'error']({ verdict: verification.verdict, failed: checks.filter((check) => check.status === 'failed'), durationMs: verification.durationMs }, 'snapshot verified');
  return { snapshot, verification };
}

/** Why guest filesystems cannot be read here at all (then they are "not-checked", not failed), or undefined. */
async function filesystemToolsMissing(): Promise<string | undefined> {
  if (!(await access('/dev/fuse', constants.R_OK | constants.W_OK).then(() => true, () => false))) return 'no /dev/fuse: the guest filesystems cannot be read (qemu-storage-daemon FUSE export)';
  const found = await execa(storageDaemonBinary(), ['--version'], { reject: false });
  if (found.exitCode !== 0) return `${storageDaemonBinary()} is not installed (Debian: qemu-system-common): the guest filesystems cannot be read`;
  return undefined;
}

async function checkChecksum(disk: string, target: string, image: ImageView, signal: AbortSignal): Promise<VerificationCheck> {
  const base = { disk, check: 'sha256' as const, target };
  const info = await stat(image.path).catch(() => undefined);
  if (!info) return { ...base, status: 'failed', detail: `${image.path} is missing` };
  if (info.size !== image.sizeBytes) return { ...base, status: 'failed', detail: `${image.path} is ${info.size} bytes, ${image.sizeBytes} were written (${info.size < image.sizeBytes ? 'truncated' : 'grown'})` };
  const sha256 = await sha256File(image.path, signal);
  if (sha256 !== image.sha256) return { ...base, status: 'failed', detail: `sha256 ${sha256} differs from the recorded ${image.sha256}` };
  return { ...base, status: 'passed', detail: `sha256 ${sha256}` };
}

async function checkQcow2(disk: string, target: string, image: ImageView, signal: AbortSignal): Promise<VerificationCheck> {
  const base = { disk, check: 'qemu-img-check' as const, target };
  if (image.format !== 'qcow2') return { ...base, status: 'not-checked', detail: 'raw image: no metadata to check' };
  const result = await execa(qemuImgBinary(), ['check', '-U', '-f', 'qcow2', image.path], { reject: false, all: true, cancelSignal: signal });
  if (signal.aborted) throw signal.reason;
  const output = String(result.all ?? '').trim();
  // 0: no errors; 3: leaked clusters only (space, not data); 2: corruptions; 1, 63: could not check.
  if (result.exitCode === 0) return { ...base, status: 'passed', detail: 'no errors' };
  if (result.exitCode === 3) return { ...base, status: 'passed', detail: `leaked clusters only (no data affected): ${output.split('\n').at(-3) ?? ''}` };
  return { ...base, status: 'failed', detail: `qemu-img check exit ${result.exitCode}: ${output.slice(-600)}` };
}

/** The images an incremental image's content depends on, nearest first, from the store's own metadata. */
export async function backingChain(paths: Paths, image: ImageView): Promise<{ snapshot: string; image: ImageView; missing?: VerificationCheck }[]> {
  const chain: { snapshot: string; image: ImageView; missing?: VerificationCheck }[] = [];
  let current = image;
  const seen = new Set<string>();
  while (current.backing) {
    const { snapshot, file } = current.backing;
    if (seen.has(snapshot)) break;
    seen.add(snapshot);
    const holder = await loadSnapshot(paths, snapshot).catch(() => undefined);
    const next = holder?.disks.find((disk) => disk.image.file === file)?.image;
    if (!next) {
      const placeholder: ImageView = { file, format: current.backing.format, sizeBytes: 0, sha256: '', path: path.resolve(path.dirname(current.path), '..', snapshot, file) };
      chain.push({ snapshot, image: placeholder, missing: { disk: '', check: 'sha256', target: `backing ${snapshot}/${file}`, status: 'failed', detail: `the backing image ${snapshot}/${file} is not in the store` } });
      break;
    }
    chain.push({ snapshot, image: next });
    current = next;
  }
  return chain;
}
