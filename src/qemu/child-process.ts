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
      exitedFirst.catch(() => {});
    }
  }

  /**
   * Make sure the process is gone: `quit` over QMP if a client is given, wait, SIGTERM, wait,
   * SIGKILL, wait. Idempotent; never throws (logs instead), so it is safe in `finally`.
   */
  async terminate(qmp?: QmpClient, graceMs = 3000): Promise<QemuExit> {
    if (this.#exit) return this.#exit;
    if (qmp && qmp.state === 'ready') {
      // A hung or stopped QEMU never answers: the quit gets a deadline like every other step.
      await withDeadline(qmp.execute('quit').catch(() => {}), graceMs, () => {});
      if (await this.#waitExit(graceMs)) return this.#exit!;
    }
    this.subprocess.kill('SIGTERM');
    if (await this.#waitExit(graceMs)) return this.#exit!;
    this.log.warn({ pid: this.subprocess.pid }, 'child QEMU ignored SIGTERM; sending SIGKILL');
    this.subprocess.kill('SIGKILL');
    if (await this.#waitExit(10_000)) return this.#exit!;
    this.log.error({ pid: this.subprocess.pid }, 'child QEMU did not die after SIGKILL');
    return { exitCode: undefined, signal: 'unknown' };
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
