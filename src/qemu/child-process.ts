import { execa, type ResultPromise } from 'execa';
import type { Logger } from 'pino';
import { ForksnapError } from '../errors.js';
import { QmpClient } from '../qmp/client.js';
import { sleep, withDeadline } from '../util/abort.js';
import { isAlive } from './process-info.js';

/**
 * A QEMU process that forksnap owns for the length of one job (the child of a snapshot), spawned
 * with execa and never daemonized, so its exit is observed directly. Keeps the tail of its output
 * for error messages.
 */
export interface QemuExit {
  readonly exitCode: number | undefined;
  readonly signal: string | undefined;
}

/**
 * Which step of `terminate` ended the process: it had `exited` by itself (or during the first
 * wait), it obeyed `quit`, or it needed SIGTERM or SIGKILL.
 */
export type TerminatedBy = 'exited' | 'quit' | 'SIGTERM' | 'SIGKILL';

export interface QemuTermination extends QemuExit {
  readonly by: TerminatedBy;
}

const OUTPUT_TAIL_BYTES = 8192;
const SPAWN_OPTIONS = { reject: false, all: true, buffer: false, stdin: 'ignore', cleanup: true } as const;

export class QemuChildProcess {
  #tail = '';
  #exit: QemuExit | undefined;
  readonly exited: Promise<QemuExit>;

  private constructor(private readonly subprocess: ResultPromise<typeof SPAWN_OPTIONS>, readonly argv: readonly string[], private readonly log: Logger) {
    subprocess.all?.setEncoding('utf8');
    subprocess.all?.on('data', (chunk: string) => {
      this.#tail = (this.#tail + chunk).slice(-OUTPUT_TAIL_BYTES);
    });
    this.exited = subprocess.then((result) => {
      this.#exit = { exitCode: result.exitCode, signal: result.signal ?? undefined };
      log.info({ pid: this.pid, ...this.#exit }, 'child QEMU exited');
      return this.#exit;
    });
  }

  static spawn(argv: readonly string[], log: Logger): QemuChildProcess {
    const [binary, ...args] = argv as [string, ...string[]];
    const subprocess = execa(binary, args, SPAWN_OPTIONS);
    const child = new QemuChildProcess(subprocess, argv, log);
    log.info({ pid: child.pid, argv }, 'child QEMU started');
    return child;
  }

  get pid(): number {
    const pid = this.subprocess.pid;
    if (pid === undefined) throw new ForksnapError('VM_START_FAILED', `QEMU could not be spawned: ${this.#tail}`, { argv: this.argv });
    return pid;
  }

  get exit(): QemuExit | undefined {
    return this.#exit;
  }

  get outputTail(): string {
    return this.#tail.trim();
  }

  /** Connect to the child's QMP socket; fails early with the output tail if QEMU exits first. */
  async connectQmp(socket: string, signal: AbortSignal): Promise<QmpClient> {
    const local = new AbortController();
    const exitedFirst = this.exited.then((exit) => {
      throw new ForksnapError('QEMU_EXITED', `child QEMU exited before its QMP socket answered (exit ${exit.exitCode ?? exit.signal}): ${this.outputTail}`, { pid: this.pid, ...exit, outputTail: this.outputTail, argv: this.argv });
    });
    try {
      return await Promise.race([QmpClient.connect(socket, { log: this.log, signal: AbortSignal.any([signal, local.signal]), timeoutMs: 30_000 }), exitedFirst]);
    } finally {
      local.abort(new Error('settled'));
      exitedFirst.catch((error: unknown) => this.log.debug({ pid: this.subprocess.pid, err: (error as Error).message }, 'child QEMU exited after the QMP connect settled'));
    }
  }

  /**
   * Make sure the process is gone, as QEMU's machine.py does: `quit` over QMP if a client is given,
   * wait, SIGTERM, wait, SIGKILL, wait. Resolves with the exit and the step that ended it.
   * Idempotent. Throws QEMU_ABNORMAL_SHUTDOWN (with every step's outcome) when the process is still
   * there after SIGKILL: the caller's undo then fails and the job journal is kept.
   */
  async terminate(qmp?: QmpClient, graceMs = 3000, killWaitMs = 10_000): Promise<QemuTermination> {
    if (this.#exit) return { ...this.#exit, by: 'exited' };
    const steps: string[] = [];
    if (qmp && qmp.state === 'ready') {
      // A hung or stopped QEMU never answers: the quit gets a deadline like every other step.
      const quit = qmp.execute('quit', undefined, { signal: AbortSignal.timeout(graceMs) }).then(
        () => 'accepted',
        (error: unknown) => `refused or unanswered: ${(error as Error).message}`,
      );
      steps.push(`quit: ${await quit}`);
      if (await this.#waitExit(graceMs)) return { ...this.#exit!, by: 'quit' };
    } else if (await this.#waitExit(0)) {
      return { ...this.#exit!, by: 'exited' };
    }
    steps.push(`SIGTERM: ${this.#signal('SIGTERM')}`);
    if (await this.#waitExit(graceMs)) return { ...this.#exit!, by: 'SIGTERM' };
    this.log.warn({ pid: this.subprocess.pid }, 'child QEMU ignored SIGTERM; sending SIGKILL');
    steps.push(`SIGKILL: ${this.#signal('SIGKILL')}`);
    if (await this.#waitExit(killWaitMs)) return { ...this.#exit!, by: 'SIGKILL' };
    this.log.error({ pid: this.subprocess.pid, steps }, 'child QEMU did not die after SIGKILL');
    throw new ForksnapError('QEMU_ABNORMAL_SHUTDOWN', `child QEMU ${this.subprocess.pid} is still there ${killWaitMs} ms after SIGKILL (${steps.join('; ')}); it may hold the snapshot images`, { pid: this.subprocess.pid, steps, outputTail: this.outputTail.slice(-500) });
  }

  #signal(name: 'SIGTERM' | 'SIGKILL'): string {
    try {
      return this.subprocess.kill(name) ? 'sent' : 'not sent (already exited)';
    } catch (error) {
      return `failed: ${(error as Error).message}`;
    }
  }

  async #waitExit(ms: number): Promise<boolean> {
    return withDeadline(this.exited.then(() => true), ms, () => false);
  }
}

/** Wait until a (non-child) pid is gone, polling /proc. */
export async function waitForPidExit(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!(await isAlive(pid))) return true;
    await sleep(50);
  }
  return !(await isAlive(pid));
}
