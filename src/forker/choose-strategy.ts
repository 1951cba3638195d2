import { readFile, stat } from 'node:fs/promises';
import { ForksnapError, isForksnapError } from '../errors.js';
import type { QmpClient } from '../qmp/client.js';
import { availableCapabilities } from './migration-config.js';
import { sandboxRefusesFork } from '../qemu/sandbox-policy.js';
import { backgroundSnapshotStrategy, forkPostcopyStrategy, forkStrategy } from './halt-then-migrate.js';
import { precopyStrategy } from './precopy.js';
import { AUTO_ORDER, type BackgroundPush, type CaptureStrategy, type StrategyName } from './strategy.js';

/**
 * Which strategies this QEMU (binary and host kernel) supports. A capability being listed is not
 * enough: background-snapshot needs userfaultfd write-protection from the kernel, which QEMU only
 * checks when the capability is switched on. So each candidate is switched on and off again.
 * With the parent's pid, fork is also refused where the VM's seccomp sandbox (-sandbox spawn=deny)
 * would refuse fork() or kill the VM for it (src/qemu/sandbox-policy.ts).
 */
export async function supportedStrategies(qmp: QmpClient, signal?: AbortSignal, parentPid?: number): Promise<{ supported: StrategyName[]; reasons: Partial<Record<StrategyName, string>> }> {
  const caps = await availableCapabilities(qmp, signal);
  const supported: StrategyName[] = [];
  const reasons: Partial<Record<StrategyName, string>> = {};
  const probe = async (name: StrategyName, capability: string) => {
    if (!caps.has(capability)) {
      reasons[name] = `this QEMU has no "${capability}" migration capability${name === 'fork' ? ' (it is not built with forksnap\'s patch; see `forksnap qemu build`)' : ''}`;
      return;
    }
    if (caps.get(capability)) {
      supported.push(name);
      return;
    }
    // Probe in isolation: a capability the user has on (xbzrle, multifd) may conflict with this
    // one, but the capture switches it off anyway. One command (QEMU validates the resulting set),
    // and the user's settings are put back whatever happens.
    const othersOn = [...caps].filter(([other, state]) => state && other !== capability).map(([other]) => other);
    let switched = false;
    try {
      await qmp.execute('migrate-set-capabilities', { capabilities: [...othersOn.map((other) => ({ capability: other, state: false })), { capability, state: true }] }, { signal });
      switched = true;
      supported.push(name);
    } catch (error) {
      // Only QEMU refusing the capability means "not supported"; a cancel, a timeout or a dropped
      // connection is not an answer about this QEMU and is rethrown as it is.
      if (signal?.aborted) throw signal.reason;
      if (!isForksnapError(error, 'QMP_COMMAND_FAILED')) throw error;
      reasons[name] = error.message;
    } finally {
      // Even when cancelled meanwhile: the user's capabilities go back (off first, then on).
      if (switched) {
        const restoreSignal = AbortSignal.timeout(5_000);
        await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability, state: false }] }, { signal: restoreSignal });
        if (othersOn.length) await qmp.execute('migrate-set-capabilities', { capabilities: othersOn.map((other) => ({ capability: other, state: true })) }, { signal: restoreSignal });
      }
    }
  };
  await probe('fork', 'x-fork-snapshot');
  const sandboxed = supported.includes('fork') && parentPid ? await sandboxRefusesFork(parentPid, qmp.version) : undefined;
  if (sandboxed) {
    supported.splice(supported.indexOf('fork'), 1);
    reasons.fork = sandboxed;
  }
  // fork-postcopy: fork, the patch's x-fork-postcopy (10.0 series), and a child that may have userfaultfd.
  if (!supported.includes('fork')) reasons['fork-postcopy'] = `it needs the fork strategy: ${reasons.fork ?? 'unsupported'}`;
  else if (!caps.has('x-fork-postcopy')) reasons['fork-postcopy'] = 'this QEMU has no "x-fork-postcopy" migration capability (forksnap\'s builds from patch 0004 on have it: `scripts/build-qemu.sh 7.2|10.0`)';
  else {
    const noUffd = parentPid ? await childLacksUserfaultfd(parentPid) : undefined;
    if (noUffd) reasons['fork-postcopy'] = noUffd;
    else supported.push('fork-postcopy');
  }
  await probe('background-snapshot', 'background-snapshot');
  if (reasons['background-snapshot'] && /not supported by host kernel/i.test(reasons['background-snapshot']) && parentPid) {
    reasons['background-snapshot'] += await userfaultfdHint(parentPid);
  }
  if (caps.has('pause-before-switchover')) supported.push('precopy');
  else reasons.precopy = 'this QEMU has no pause-before-switchover capability';
  return { supported, reasons };
}

/**
 * Why a non-root QEMU (libvirt runs it as libvirt-qemu) cannot have userfaultfd: QEMU < 8.1 opens
 * it with the syscall, which an unprivileged process only gets with vm.unprivileged_userfaultfd=1
 * (newer QEMU also tries /dev/userfaultfd, which needs read/write access for its uid).
 */
async function userfaultfdHint(pid: number): Promise<string> {
  const [status, sysctl] = await Promise.all([
    readFile(`/proc/${pid}/status`, 'utf8').catch(() => ''),
    readFile('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').catch(() => ''),
  ]);
  const uid = Number(status.match(/^Uid:\s*(\d+)/m)?.[1] ?? 0);
  if (uid === 0 || sysctl.trim() !== '0') return '';
  return ` (this QEMU runs as uid ${uid}, and the host has vm.unprivileged_userfaultfd=0: an unprivileged QEMU gets no userfaultfd; \`sysctl vm.unprivileged_userfaultfd=1\` enables it, or use fork)`;
}

/**
 * The child of a fork-postcopy capture is a postcopy destination: its QEMU (the parent's
 * identity) needs userfaultfd, including faults taken inside the kernel (QEMU's own reads of
 * guest RAM), which an unprivileged process only gets with vm.unprivileged_userfaultfd=1 or
 * read/write access to /dev/userfaultfd (QEMU >= 8.1 tries it first).
 */
async function childLacksUserfaultfd(pid: number): Promise<string | undefined> {
  const [status, sysctl, device] = await Promise.all([
    readFile(`/proc/${pid}/status`, 'utf8').catch(() => ''),
    readFile('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').catch(() => ''),
    stat('/dev/userfaultfd').catch(() => undefined),
  ]);
  const uid = Number(status.match(/^Uid:\s*(\d+)/m)?.[1] ?? 0);
  if (uid === 0 || sysctl.trim() === '1') return undefined;
  if (device && ((device.mode & 0o006) === 0o006 || (device.uid === uid && (device.mode & 0o600) === 0o600))) return undefined;
  return `the child QEMU would run as uid ${uid}, which gets no userfaultfd for postcopy here (vm.unprivileged_userfaultfd=0 and no read/write access to /dev/userfaultfd); \`sysctl vm.unprivileged_userfaultfd=1\` enables it, or use fork`;
}

export interface StrategyOptions {
  /** fork-postcopy: what is pushed besides the requested pages (default 'off'). */
  readonly backgroundPush?: BackgroundPush;
}

export function strategyByName(name: StrategyName, options: StrategyOptions = {}): CaptureStrategy {
  switch (name) {
    case 'fork':
      return forkStrategy;
    case 'fork-postcopy':
      return forkPostcopyStrategy(options.backgroundPush ?? 'off');
    case 'background-snapshot':
      return backgroundSnapshotStrategy;
    case 'precopy':
      return precopyStrategy();
  }
}

/** The requested strategy if supported, else the best supported one (AUTO_ORDER). */
export async function chooseStrategy(qmp: QmpClient, requested: StrategyName | 'auto', signal?: AbortSignal, parentPid?: number, options: StrategyOptions = {}): Promise<{ strategy: CaptureStrategy; supported: StrategyName[] }> {
  const { supported, reasons } = await supportedStrategies(qmp, signal, parentPid);
  if (requested !== 'auto') {
    if (!supported.includes(requested)) {
      throw new ForksnapError('STRATEGY_UNSUPPORTED', `strategy ${requested} is not available for this VM: ${reasons[requested] ?? 'unsupported'}; available: ${supported.join(', ') || 'none'}`, { requested, supported, reasons });
    }
    return { strategy: strategyByName(requested, options), supported };
  }
  const best = AUTO_ORDER.find((name) => supported.includes(name));
  if (!best) throw new ForksnapError('STRATEGY_UNSUPPORTED', `no capture strategy is available: ${JSON.stringify(reasons)}`, { reasons });
  return { strategy: strategyByName(best, options), supported };
}
