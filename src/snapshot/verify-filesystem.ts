import { execa } from 'execa';
import type { Logger } from 'pino';
import type { VerificationCheck } from './store.js';
import { openRawViews } from './raw-views.js';

/**
 * The filesystem-level part of `forksnap snapshot verify`, read-only: the guest disk is probed as
 * a whole (blkid); a bare filesystem is checked there, a partition table (partx) gets each
 * partition probed and checked. ext2/3/4: `e2fsck -fn` finds no error, and `dumpe2fs -h` says
 * "clean" without `needs_recovery` (the journal was closed). XFS: `xfs_repair -n` finds no error
 * and the log is clean (no "metadata changes in a log"). Anything else is reported "not-checked".
 */
const OUTPUT_TAIL = 600;

interface Partition {
  readonly number: number;
  readonly offset: number;
  readonly size: number;
}

export async function checkFilesystems(disk: string, image: { file: string; format: 'raw' | 'qcow2' }, options: { signal: AbortSignal; log: Logger }): Promise<VerificationCheck[]> {
  const whole = await openRawViews(image, [{ name: 'disk' }], options);
  let partitions: Partition[] = [];
  try {
    const probe = await blkid(whole.files.disk!, options.signal);
    if (probe.TYPE) return [await checkOne(disk, 'whole disk', probe.TYPE, whole.files.disk!, options.signal)];
    if (!probe.PTTYPE) return [{ disk, check: 'filesystem', target: 'whole disk', status: 'not-checked', detail: 'no filesystem and no partition table found' }];
    partitions = await listPartitions(whole.files.disk!, options.signal);
  } finally {
    await whole.close();
  }
  if (partitions.length === 0) return [{ disk, check: 'filesystem', target: 'whole disk', status: 'not-checked', detail: 'a partition table without partitions' }];
  const views = await openRawViews(image, partitions.map((p) => ({ name: String(p.number), offset: p.offset, size: p.size })), options);
  try {
    const checks: VerificationCheck[] = [];
    for (const partition of partitions) {
      const file = views.files[String(partition.number)]!;
      const probe = await blkid(file, options.signal);
      const target = `partition ${partition.number}`;
      if (!probe.TYPE) checks.push({ disk, check: 'filesystem', target, status: 'not-checked', detail: 'no filesystem found' });
      else checks.push(await checkOne(disk, target, probe.TYPE, file, options.signal));
    }
    return checks;
  } finally {
    await views.close();
  }
}

async function checkOne(disk: string, target: string, type: string, file: string, signal: AbortSignal): Promise<VerificationCheck> {
  const base = { disk, check: 'filesystem' as const, target, filesystem: type };
  if (type === 'ext2' || type === 'ext3' || type === 'ext4') return { ...base, ...(await checkExt(file, signal)) };
  if (type === 'xfs') return { ...base, ...(await checkXfs(file, signal)) };
  return { ...base, status: 'not-checked', detail: `${type}: no read-only checker (ext2/3/4 and XFS are checked)` };
}

async function checkExt(file: string, signal: AbortSignal): Promise<Pick<VerificationCheck, 'status' | 'detail'>> {
  const header = await execa('dumpe2fs', ['-h', file], { reject: false, all: true, cancelSignal: signal });
  if (signal.aborted) throw signal.reason;
  const text = String(header.all ?? '');
  const state = /^Filesystem state:\s*(.+)$/m.exec(text)?.[1]?.trim();
  const features = /^Filesystem features:\s*(.+)$/m.exec(text)?.[1]?.trim().split(/\s+/) ?? [];
  if (header.exitCode !== 0) return { status: 'failed', detail: `dumpe2fs -h failed (exit ${header.exitCode}): ${tail(text)}` };
  if (features.includes('needs_recovery')) return { status: 'failed', detail: 'the journal needs recovery (needs_recovery): not cleanly unmounted' };
  if (state !== 'clean') return { status: 'failed', detail: `filesystem state "${state ?? 'unknown'}", not clean` };
  // -f: check even though it is marked clean; -n: open read-only, answer "no" to everything.
  const fsck = await execa('e2fsck', ['-fn', file], { reject: false, all: true, cancelSignal: signal });
  if (signal.aborted) throw signal.reason;
  if (fsck.exitCode !== 0) return { status: 'failed', detail: `e2fsck -fn found problems (exit ${fsck.exitCode}): ${tail(String(fsck.all ?? ''))}` };
  return { status: 'passed', detail: 'clean, no needs_recovery; e2fsck -fn found no errors' };
}

async function checkXfs(file: string, signal: AbortSignal): Promise<Pick<VerificationCheck, 'status' | 'detail'>> {
  const repair = await execa('xfs_repair', ['-n', '-f', file], { reject: false, all: true, cancelSignal: signal });
  if (signal.aborted) throw signal.reason;
  const text = String(repair.all ?? '');
  if (/metadata changes in a log/i.test(text)) return { status: 'failed', detail: 'the XFS log is dirty (metadata changes not replayed): not cleanly unmounted' };
  if (repair.exitCode !== 0) return { status: 'failed', detail: `xfs_repair -n found problems (exit ${repair.exitCode}): ${tail(text)}` };
  return { status: 'passed', detail: 'log clean; xfs_repair -n found no errors' };
}

async function blkid(file: string, signal: AbortSignal): Promise<Record<string, string>> {
  // -p: low-level probe of the file itself (no cache); exit 2 = nothing found.
  const result = await execa('blkid', ['-p', '-o', 'export', file], { reject: false, cancelSignal: signal });
  if (signal.aborted) throw signal.reason;
  return Object.fromEntries(result.stdout.split('\n').map((line) => line.split('=')).filter((pair) => pair.length >= 2).map(([key, ...value]) => [key!, value.join('=')]));
}

async function listPartitions(file: string, signal: AbortSignal): Promise<Partition[]> {
  const result = await execa('partx', ['-g', '-P', '-b', '-o', 'NR,START,SECTORS', file], { reject: false, cancelSignal: signal });
  if (signal.aborted) throw signal.reason;
  if (result.exitCode !== 0) return [];
  // partx counts 512-byte sectors for a file.
  return result.stdout.split('\n').flatMap((line) => {
    const match = /NR="(\d+)" START="(\d+)" SECTORS="(\d+)"/.exec(line);
    return match ? [{ number: Number(match[1]), offset: Number(match[2]) * 512, size: Number(match[3]) * 512 }] : [];
  });
}

function tail(text: string): string {
  return text.trim().slice(-OUTPUT_TAIL);
}
