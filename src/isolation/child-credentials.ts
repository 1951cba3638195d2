import { chown, readFile, readdir, lstat } from 'node:fs/promises';
import path from 'node:path';
import type { QemuCommandLine } from '../qemu/command-line.js';

/**
 * Who the child QEMU runs as: the parent's own identity, so the child is confined like the parent
 * (libvirt runs QEMU as libvirt-qemu; a hand-started VM may run as any user).
 *
 *   - parent started with -runas: it started as root and dropped privileges itself; the child is
 *     started the same way (as root, with the same -runas kept on its command line);
 *   - parent running as a non-root uid: the child is started as that uid, gid and supplementary
 *     groups (via setpriv, so /dev/kvm access by group keeps working);
 *   - parent running as root: the child runs as root.
 *
 * The files and sockets the child opens must then be accessible to that identity: `grantTo` hands
 * the job's own files over to it.
 */
export interface ChildCredentials {
  readonly uid: number;
  readonly gid: number;
  readonly groups: readonly number[];
}

/** The uid/gid/groups the child must run as, or undefined to run it as root (as the parent started). */
export async function childCredentials(parentPid: number, commandLine: QemuCommandLine): Promise<ChildCredentials | undefined> {
  if (commandLine.options.some((option) => option.name === 'runas')) return undefined;
  const identity = await processIdentity(parentPid);
  return identity.uid === 0 ? undefined : identity;
}

/** Real uid, gid and supplementary groups of a process, from /proc/PID/status. */
export async function processIdentity(pid: number): Promise<ChildCredentials> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => status.match(new RegExp(`^${name}:\\s*(.*)$`, 'm'))?.[1]?.trim().split(/\s+/).filter(Boolean).map(Number) ?? [];
  const [uid = 0] = field('Uid');
  const [gid = 0] = field('Gid');
  return { uid, gid, groups: field('Groups') };
}

/** argv that starts `argv` as `credentials` (setpriv execs, so the spawned pid is QEMU's). */
export function argvAs(argv: readonly string[], credentials: ChildCredentials | undefined): string[] {
  if (!credentials) return [...argv];
  const groups = credentials.groups.length > 0 ? ['--groups', credentials.groups.join(',')] : ['--clear-groups'];
  return ['setpriv', '--reuid', String(credentials.uid), '--regid', String(credentials.gid), ...groups, '--inh-caps=-all', '--', ...argv];
}

/** The uid a -runas option names (the identity the parent and child end up with after start-up). */
export function runasUser(commandLine: QemuCommandLine): string | undefined {
  const option = commandLine.options.findLast((entry) => entry.name === 'runas');
  return option?.value;
}

/** Give the job's files (recursively) to the child's identity; a no-op for root. */
export async function grantTo(credentials: ChildCredentials | undefined, ...targets: string[]): Promise<void> {
  if (!credentials) return;
  const visit = async (target: string): Promise<void> => {
    const info = await lstat(target).catch(() => undefined);
    if (!info) return;
    await chown(target, credentials.uid, credentials.gid);
    if (info.isDirectory()) for (const name of await readdir(target)) await visit(path.join(target, name));
  };
  for (const target of targets) await visit(target);
}
