import { mkdir } from 'node:fs/promises';
import { execa } from 'execa';

/**
 * An XFS filesystem with reflink, on a loop device (sparse file outside the repo), for the reflink
 * backend. Mounted once and kept (with discard, so freed blocks leave the sparse file): tests make
 * their own subdirectories in it; test/global-setup.ts empties it at the start of each run.
 */
export const XFS_MOUNT = process.env.FORKSNAP_TEST_XFS ?? '/var/tmp/forksnap-test-xfs';
const XFS_IMAGE = `${XFS_MOUNT}.img`;

export async function ensureXfsMount(): Promise<string> {
  await mkdir(XFS_MOUNT, { recursive: true });
  const mounted = await execa('mountpoint', ['-q', XFS_MOUNT], { reject: false });
  if (mounted.exitCode === 0) return XFS_MOUNT;
  await execa('truncate', ['-s', '8G', XFS_IMAGE]);
  const fs = await execa('blkid', ['-o', 'value', '-s', 'TYPE', XFS_IMAGE], { reject: false });
  if (fs.stdout.trim() !== 'xfs') await execa('mkfs.xfs', ['-q', '-f', '-m', 'reflink=1', XFS_IMAGE]);
  await execa('mount', ['-o', 'loop,discard', XFS_IMAGE, XFS_MOUNT]);
  return XFS_MOUNT;
}
