import type { Logger } from 'pino';
import { verifyChildMatchesParent } from '../isolation/verify-child.js';
import { QemuChildProcess, type QemuTermination } from '../qemu/child-process.js';
import type { QmpClient } from '../qmp/client.js';

/**
 * The child QEMU of a job: started with -incoming, checked against the parent, listening for the
 * state. Replaceable, because a capture that fails before any state arrived (fork() refused) is
 * retried with another strategy on a fresh child while the parent is still halted.
 */
export class ChildSlot {
  process: QemuChildProcess | undefined;
  qmp: QmpClient | undefined;

  constructor(
    private readonly argv: readonly string[],
    private readonly qmpSocket: string,
    private readonly migrationUri: string,
    private readonly log: Logger,
    private readonly onSpawn: (pid: number) => Promise<void>,
    /** The child listens from its command line (-incoming URI, not defer): no migrate-incoming. */
    private readonly listensFromStart = false,
  ) {}

  async start(parent: QmpClient, signal: AbortSignal, options: { verify: boolean }): Promise<{ process: QemuChildProcess; qmp: QmpClient }> {
    const process = QemuChildProcess.spawn(this.argv, this.log);
    this.process = process;
    await this.onSpawn(process.pid);
    const qmp = await process.connectQmp(this.qmpSocket, signal);
    this.qmp = qmp;
    if (options.verify) await verifyChildMatchesParent(parent, qmp, signal);
    if (!this.listensFromStart) await qmp.execute('migrate-incoming', { uri: this.migrationUri }, { signal });
    return { process, qmp };
  }

  /**
   * Make sure the current child is gone (quit → SIGTERM → SIGKILL); resolves with how it ended
   * (undefined: there was none). Throws QEMU_ABNORMAL_SHUTDOWN when it will not die; the child then
   * stays in the slot, so a later stop (the undo) tries again and fails again rather than
   * reporting it stopped.
   */
  async stop(): Promise<QemuTermination | undefined> {
    const { process, qmp } = this;
    if (!process) return undefined;
    const ended = await process.terminate(qmp);
    this.process = undefined;
    this.qmp = undefined;
    qmp?.close();
    this.log.info({ pid: process.pid, by: ended.by, exitCode: ended.exitCode, signal: ended.signal }, 'child QEMU stopped');
    return ended;
  }
}
