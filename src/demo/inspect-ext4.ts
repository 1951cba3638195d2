import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';

/**
 * What is inside an ext4 image file, read without mounting or booting: the superblock's feature
 * flags (needs_recovery = the filesystem was not cleanly unmounted) and files via debugfs.
 * qcow2 images are converted to a temporary raw copy first.
 */
export interface Ext4Facts {
  needsRecovery: boolean;
  features: string;
  cleanShutdown: Record<string, string> | undefined;
  ticks: number[];
  file: string | undefined;
}

export async function inspectExt4(image: string, format: 'raw' | 'qcow2', options: { forceShare?: boolean } = {}): Promise<Ext4Facts> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'forksnap-inspect-'));
  try {
    let raw = image;
    if (format === 'qcow2') {
      raw = path.join(dir, 'image.raw');
      await execa('qemu-img', ['convert', ...(options.forceShare ? ['-U'] : []), '-f', 'qcow2', '-O', 'raw', image, raw]);
    }
    const dump = await execa('dumpe2fs', ['-h', raw], { reject: false });
    const features = /Filesystem features:\s*(.*)/.exec(dump.stdout)?.[1] ?? '';
    const cat = async (file: string) => {
      const result = await execa('debugfs', ['-R', `cat ${file}`, raw], { reject: false });
      return result.exitCode === 0 && !/File not found/.test(result.stderr) ? result.stdout : undefined;
    };
    const marker = await cat('/clean-shutdown');
    const ticksText = (await cat('/ticks')) ?? '';
    return {
      needsRecovery: /\bneeds_recovery\b/.test(features),
      features,
      cleanShutdown: marker === undefined || marker === '' ? undefined : Object.fromEntries(marker.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])),
      ticks: ticksText.split('\n').filter((l) => /^\d+$/.test(l.trim())).map(Number),
      file: await cat('/file'),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export const maxTick = (facts: Ext4Facts) => (facts.ticks.length ? Math.max(...facts.ticks) : 0);
