import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { readCmdline, readExe } from './process-info.js';

/**
 * Whether a running QEMU's seccomp sandbox lets the fork strategy's fork() through.
 *
 * `-sandbox on,...,spawn=deny` (as libvirt starts QEMU) denies every clone without CLONE_VM: stock
 * QEMU before 9.0 kills itself with SIGSYS on the first fork(), 9.0 and later answer EPERM.
 * forksnap's patch series (patches/qemu-<base>/0003-seccomp-*) lets exactly a plain fork() through
 * and answers EPERM otherwise; a build has it when its BUILD-INFO.json (scripts/build-qemu.sh,
 * next to bin/) lists that patch. QMP cannot tell the policy, so it is read from the command line.
 */
export interface SandboxPolicy {
  /** `-sandbox` with spawn=deny is on the command line. */
  readonly spawnDenied: boolean;
  /** The binary is a forksnap build whose seccomp patch lets a plain fork() through. */
  readonly forkAllowedByPatch: boolean;
}

/** The spawn policy of a `-sandbox` argument list (the last -sandbox wins, as in QEMU). */
export function parseSandboxSpawnDenied(argv: readonly string[]): boolean {
  let denied = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    let value: string | undefined;
    if (arg === '-sandbox' || arg === '--sandbox') value = argv[++i];
    else if (arg.startsWith('-sandbox=') || arg.startsWith('--sandbox=')) value = arg.slice(arg.indexOf('=') + 1);
    if (value === undefined) continue;
    const parts = value.split(',');
    const truthy = (text: string | undefined) => ['on', 'yes', 'true', 'y'].includes(text ?? '');
    const enabled = (!parts[0]!.includes('=') && truthy(parts[0])) || parts.some((part) => part.startsWith('enable=') && truthy(part.slice(7)));
    denied = enabled && parts.some((part) => part === 'spawn=deny');
  }
  return denied;
}

export async function readSandboxPolicy(pid: number): Promise<SandboxPolicy> {
  const argv = await readCmdline(pid);
  const spawnDenied = parseSandboxSpawnDenied(argv);
  if (!spawnDenied) return { spawnDenied, forkAllowedByPatch: false };
  // No binary path or no BUILD-INFO.json (not a forksnap build): the patch is not known to be there.
  const exe = await readExe(pid).catch(() => '');
  const info = exe ? await readFile(path.join(path.dirname(exe), '..', 'BUILD-INFO.json'), 'utf8').catch(() => '') : '';
  let patches: unknown = [];
  try {
    patches = (JSON.parse(info || '{}') as { patches?: unknown }).patches ?? [];
  } catch {
    patches = [];
  }
  const forkAllowedByPatch = Array.isArray(patches) && patches.some((name) => typeof name === 'string' && /seccomp/.test(name));
  return { spawnDenied, forkAllowedByPatch };
}

/** Why fork must not be used on this QEMU, or undefined if its sandbox (if any) lets fork() through. */
export async function sandboxRefusesFork(pid: number, version: { major: number; minor: number } | undefined): Promise<string | undefined> {
  const policy = await readSandboxPolicy(pid);
  if (!policy.spawnDenied || policy.forkAllowedByPatch) return undefined;
  const kills = !version || version.major < 9;
  return `the VM runs under -sandbox spawn=deny and its QEMU is not built with forksnap's seccomp patch: fork() would ${kills ? 'kill the VM (SIGSYS, QEMU < 9.0)' : 'be refused (EPERM)'}`;
}
