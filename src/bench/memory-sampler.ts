import { readFile } from 'node:fs/promises';
import { childPids } from '../qemu/process-info.js';

/**
 * Peak host memory of every QEMU process of one measured run: the parent VM, the fork strategy's
 * streamer (a child of the parent named "qemu-forksnap"), and the qemu-system processes this Node
 * process spawned (the snapshot job's child). qemu-img and the shell of an exec: migration are not
 * counted. Every `intervalMs` the set is rediscovered and VmRSS summed; every
 * `pssEvery`-th tick Pss (/proc/PID/smaps_rollup) is summed too.
 *
 * Both are reported because they answer different questions: the VmRSS sum counts the pages the
 * parent and its forked streamer share copy-on-write twice (it overstates fork by up to the whole
 * guest RAM), Pss splits shared pages between their users, so its sum is the real host memory in
 * use. smaps_rollup walks the page tables (~6 ms for 1.5 GiB resident), hence the lower rate.
 * The child's own Pss (the snapshot job's qemu-system: it holds the guest RAM it received, all of
 * it, or with fork-postcopy what its shutdown touched) is read at every tick and kept apart.
 */
export interface MemoryPeak {
  readonly peakRssBytes: number;
  readonly peakPssBytes: number;
  /** The snapshot job's child QEMU alone. */
  readonly childPeakPssBytes: number;
  readonly samples: number;
  /** comm of every process seen, with how many of them (e.g. {"qemu-system-x86": 2, "qemu-forksnap": 1}). */
  readonly processes: Record<string, number>;
}

export class MemorySampler {
  #peakRss = 0;
  #peakPss = 0;
  #childPeakPss = 0;
  #samples = 0;
  #stopped = false;
  readonly #seen = new Map<number, string>();
  readonly #loop: Promise<void>;

  private constructor(private readonly parentPid: number, private readonly intervalMs: number, private readonly pssEvery: number) {
    this.#loop = this.#run();
  }

  static start(parentPid: number, options: { intervalMs?: number; pssEvery?: number } = {}): MemorySampler {
    return new MemorySampler(parentPid, options.intervalMs ?? 50, options.pssEvery ?? 5);
  }

  /** Stop sampling (after one last sample) and return the peaks. */
  async stop(): Promise<MemoryPeak> {
    this.#stopped = true;
    await this.#loop;
    const processes: Record<string, number> = {};
    for (const comm of this.#seen.values()) processes[comm] = (processes[comm] ?? 0) + 1;
    return { peakRssBytes: this.#peakRss, peakPssBytes: this.#peakPss, childPeakPssBytes: this.#childPeakPss, samples: this.#samples, processes };
  }

  async #run(): Promise<void> {
    for (let tick = 0; ; tick++) {
      const started = Date.now();
      const last = this.#stopped;
      await this.#sample(last || tick % this.pssEvery === 0);
      if (last) return;
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, this.intervalMs - (Date.now() - started))));
    }
  }

  async #sample(withPss: boolean): Promise<void> {
    const { pids, children } = await this.#qemuPids();
    let rss = 0;
    let pss = 0;
    let childPss = 0;
    for (const pid of pids) {
      rss += await readKb(`/proc/${pid}/status`, 'VmRSS');
      const isChild = children.includes(pid);
      if (withPss || isChild) {
        const kb = await readKb(`/proc/${pid}/smaps_rollup`, 'Pss');
        if (withPss) pss += kb;
        if (isChild) childPss += kb;
      }
    }
    this.#samples++;
    this.#peakRss = Math.max(this.#peakRss, rss * 1024);
    if (withPss) this.#peakPss = Math.max(this.#peakPss, pss * 1024);
    this.#childPeakPss = Math.max(this.#childPeakPss, childPss * 1024);
  }

  async #qemuPids(): Promise<{ pids: number[]; children: number[] }> {
    const ofParent = await childPids(this.parentPid);
    const ours = await childPids(process.pid);
    const pids = [this.parentPid];
    const children: number[] = [];
    for (const pid of [...ofParent, ...ours]) {
      const comm = (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim();
      if (comm.startsWith('qemu-system') || comm === 'qemu-forksnap') pids.push(pid);
      if (comm.startsWith('qemu-system') && ours.includes(pid)) children.push(pid);
    }
    for (const pid of pids) {
      if (!this.#seen.has(pid)) this.#seen.set(pid, (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '?')).trim());
    }
    return { pids, children };
  }
}

/** A "Key:   1234 kB" field of a /proc file, in kB; 0 if the process is gone. */
async function readKb(file: string, key: string): Promise<number> {
  const text = await readFile(file, 'utf8').catch(() => '');
  const match = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
  return match ? Number(match[1]) : 0;
}
