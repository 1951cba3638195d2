import { readdir, readFile } from 'node:fs/promises';

/**
 * How long the guest's vCPU thread waited for a host CPU: /proc/PID/task/TID/schedstat (time on a
 * CPU, time runnable but waiting in a run queue, in ns), sampled every `intervalMs` for the life of
 * a guest, interpolated at any host time. The benchmark uses it to take host CPU contention out of
 * the guest's rate: on a shared 2-core host the run-queue wait swings the raw rate several-fold
 * between two seconds, while time the vCPU spends on a CPU or blocked (a copy-on-write fault, a
 * userfaultfd write-protect fault waiting for the migration thread, the BQL) stays counted.
 *
 * Under TCG the vCPU thread is the one that burns CPU while the guest runs its dirtying loop;
 * QEMU names threads only with `-name debug-threads=on`, so it is found as the busiest thread.
 */
export interface SchedSample {
  readonly at: number;
  readonly runNs: number;
  readonly waitNs: number;
}

export class VcpuClock {
  readonly samples: SchedSample[] = [];
  #timer: NodeJS.Timeout | undefined;

  private constructor(readonly pid: number, readonly tid: number) {}

  /** Find the vCPU thread (busiest over `probeMs`) and start sampling it. */
  static async start(pid: number, options: { intervalMs?: number; probeMs?: number } = {}): Promise<VcpuClock> {
    const clock = new VcpuClock(pid, await busiestThread(pid, options.probeMs ?? 1000));
    const tick = async () => {
      const sample = await readSchedstat(pid, clock.tid);
      if (sample) clock.samples.push(sample);
      if (clock.#timer !== undefined) clock.#timer = setTimeout(() => void tick(), options.intervalMs ?? 50);
    };
    clock.#timer = setTimeout(() => void tick(), 0);
    return clock;
  }

  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** Share of the wall time between two host times the vCPU thread waited in a run queue. */
  waitShareBetween(from: number, to: number): number | undefined {
    const a = this.#interpolate(from);
    const b = this.#interpolate(to);
    return a && b && to > from ? (b.waitNs - a.waitNs) / 1e6 / (to - from) : undefined;
  }

  /** Share of the wall time the vCPU thread was on a CPU between two host times. */
  onCpuShareBetween(from: number, to: number): number | undefined {
    const a = this.#interpolate(from);
    const b = this.#interpolate(to);
    return a && b && to > from ? (b.runNs - a.runNs) / 1e6 / (to - from) : undefined;
  }

  #interpolate(at: number): { runNs: number; waitNs: number } | undefined {
    const samples = this.samples;
    if (samples.length === 0 || at < samples[0]!.at || at > samples.at(-1)!.at) return undefined;
    const high = samples.findIndex((sample) => sample.at >= at);
    if (high === 0) return samples[0];
    const a = samples[high - 1]!;
    const b = samples[high]!;
    const f = b.at === a.at ? 0 : (at - a.at) / (b.at - a.at);
    return { runNs: a.runNs + f * (b.runNs - a.runNs), waitNs: a.waitNs + f * (b.waitNs - a.waitNs) };
  }
}

async function readSchedstat(pid: number, tid: number): Promise<SchedSample | undefined> {
  const text = await readFile(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').catch(() => undefined);
  const [run, wait] = text?.trim().split(/\s+/).map(Number) ?? [];
  return run === undefined || wait === undefined ? undefined : { at: Date.now(), runNs: run, waitNs: wait };
}

async function busiestThread(pid: number, probeMs: number): Promise<number> {
  const tids = (await readdir(`/proc/${pid}/task`)).map(Number);
  const first = new Map<number, number>();
  for (const tid of tids) first.set(tid, (await readSchedstat(pid, tid))?.runNs ?? 0);
  await new Promise((resolve) => setTimeout(resolve, probeMs));
  let best = tids[0]!;
  let bestDelta = -1;
  for (const tid of tids) {
    const delta = ((await readSchedstat(pid, tid))?.runNs ?? 0) - (first.get(tid) ?? 0);
    if (delta > bestDelta) [best, bestDelta] = [tid, delta];
  }
  return best;
}
