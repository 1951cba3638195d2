import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import type { Logger } from 'pino';
import { vmDir, type Paths } from '../config.js';
import { ForksnapError, errorMessage, isForksnapError } from '../errors.js';
import { QmpClient } from '../qmp/client.js';
import { sleep } from '../util/abort.js';
import { REPO_ROOT } from '../repo-root.js';
import type { VmRecord } from './registry.js';

/**
 * How forksnap reaches a VM's QMP, for the length of one operation (a job, an attach, a stop):
 *
 *   - a QMP socket (forksnap-started VMs, hand-started ones, Proxmox's /var/run/qemu-server/ID.qmp):
 *     QEMU serves one client at a time, and Proxmox connects per command, so a busy socket (the
 *     connection is queued and no greeting comes) is retried briefly, then refused with VM_BUSY.
 *     forksnap never holds it between operations.
 *   - a libvirt domain: libvirt holds the monitor; libexec/libvirt-qmp-bridge.py offers QMP on a
 *     private socket through libvirt's monitor passthrough (commands and events). The bridge lives
 *     exactly as long as this connection: it exits when its stdin (held by this process) closes,
 *     so a killed forksnap leaves no bridge behind.
 */
export interface VmQmp {
  readonly qmp: QmpClient;
  /** Close the QMP connection (and stop the libvirt bridge). Idempotent. */
  close(): void;
}

export interface OpenOptions {
  readonly log: Logger;
  readonly signal?: AbortSignal | undefined;
  /** Total time to wait for a busy socket (default 10 s). */
  readonly busyTimeoutMs?: number;
}

export type QmpEndpoint =
  | { readonly kind: 'socket'; readonly path: string }
  | { readonly kind: 'libvirt'; readonly domain: string; readonly uri: string };

export function endpointOf(record: Pick<VmRecord, 'qmpSocket' | 'libvirt'>): QmpEndpoint {
  return record.libvirt ? { kind: 'libvirt', domain: record.libvirt.domain, uri: record.libvirt.uri } : { kind: 'socket', path: record.qmpSocket };
}

export function describeEndpoint(endpoint: QmpEndpoint): string {
  return endpoint.kind === 'socket' ? endpoint.path : `libvirt domain ${endpoint.domain} (${endpoint.uri})`;
}

export async function openVmQmp(paths: Paths, vm: string, endpoint: QmpEndpoint, options: OpenOptions): Promise<VmQmp> {
  if (endpoint.kind === 'socket') {
    const qmp = await connectRetryingBusy(endpoint.path, options);
    return { qmp, close: () => qmp.close() };
  }
  await mkdir(vmDir(paths, vm), { recursive: true });
  const socket = path.join(vmDir(paths, vm), `qmp-bridge-${process.pid}-${randomBytes(3).toString('hex')}.sock`);
  const bridge = await startLibvirtBridge(endpoint, socket, options);
  try {
    const qmp = await QmpClient.connect(socket, { log: options.log, signal: options.signal, timeoutMs: 15_000 });
    let closed = false;
    return {
      qmp,
      close: () => {
        if (closed) return;
        closed = true;
        qmp.close();
        bridge.stop();
      },
    };
  } catch (error) {
    bridge.stop();
    throw error;
  }
}

/** Connect to a QMP socket; a socket that accepts but sends no greeting is busy: retry, then VM_BUSY. */
async function connectRetryingBusy(socket: string, options: OpenOptions): Promise<QmpClient> {
  const deadline = Date.now() + (options.busyTimeoutMs ?? 10_000);
  let lastError: unknown;
  for (let attempt = 1; ; attempt++) {
    try {
      return await QmpClient.connect(socket, { log: options.log, signal: options.signal, timeoutMs: 3_000 });
    } catch (error) {
      if (options.signal?.aborted) throw options.signal.reason;
      lastError = error;
      // Accepted but no greeting in time (the kernel queues us behind the client QEMU serves), as
      // opposed to no socket or nobody listening (a VM that is gone): only the first is retried.
      const timedOut = (isForksnapError(error, 'QMP_CONNECT_FAILED') && isForksnapError(error.cause, 'PHASE_TIMEOUT')) || /greeting/i.test(errorMessage(error));
      const busy = timedOut && (await acceptsConnections(socket));
      if (!busy) throw error;
      if (Date.now() >= deadline) break;
      options.log.info({ socket, attempt }, 'QMP socket busy (another client holds it); retrying');
      await sleep(Math.min(500, Math.max(0, deadline - Date.now())), options.signal);
    }
  }
  throw new ForksnapError('VM_BUSY', `the QMP socket ${socket} accepts connections but sent no greeting: another client holds it (QEMU serves one at a time; e.g. Proxmox's qm, libvirt, or another monitor user) or QEMU is hung; it did not free up within ${Math.round((options.busyTimeoutMs ?? 10_000) / 1000)} s: ${errorMessage(lastError)}`, { socket }, { cause: lastError });
}

/** Whether something listens on a UNIX socket (a connect succeeds), without speaking to it. */
function acceptsConnections(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(socket);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

interface Bridge {
  stop(): void;
}

async function startLibvirtBridge(endpoint: Extract<QmpEndpoint, { kind: 'libvirt' }>, socket: string, options: OpenOptions): Promise<Bridge> {
  const script = path.join(REPO_ROOT, 'libexec', 'libvirt-qmp-bridge.py');
  // Debian's interpreter: python3-libvirt is packaged for it (a pyenv python3 on PATH lacks it).
  const child: ResultPromise = execa('/usr/bin/python3', [script, '--connect', endpoint.uri, endpoint.domain, socket], { stdin: 'pipe', stdout: 'pipe', stderr: 'pipe', reject: false, buffer: false, cleanup: true });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-4000)));
  const stop = () => {
    child.stdin?.end();
    child.kill('SIGTERM');
    rm(socket, { force: true }).catch((error: unknown) => options.log.warn({ socket, err: errorMessage(error) }, 'could not remove the libvirt bridge socket'));
  };
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no "ready" within 20 s')), 20_000);
      const onAbort = () => reject(options.signal!.reason);
      options.signal?.addEventListener('abort', onAbort, { once: true });
      let out = '';
      child.stdout?.setEncoding('utf8');
      child.stdout?.on('data', (chunk: string) => {
        out += chunk;
        if (out.includes('ready')) {
          clearTimeout(timer);
          options.signal?.removeEventListener('abort', onAbort);
          resolve();
        }
      });
      child.then((result) => {
        clearTimeout(timer);
        reject(new Error(`the bridge exited (${result.exitCode ?? result.signal}): ${stderr.trim() || out.trim()}`));
      }, reject);
    });
  } catch (error) {
    stop();
    if (options.signal?.aborted) throw options.signal.reason;
    throw new ForksnapError('QMP_CONNECT_FAILED', `cannot reach the QMP monitor of ${describeEndpoint(endpoint)} through libvirt: ${errorMessage(error)}`, { domain: endpoint.domain, uri: endpoint.uri }, { cause: error });
  }
  child.catch(() => undefined);
  return { stop };
}
