import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { ForksnapError } from '../errors.js';
import { parseVmSpec, type VmSpec } from '../vm/spec.js';
import { ControlChannel } from './guest-control.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/**
 * The PostgreSQL guest (scripts/build-db-guest.sh; protocol in test/fixtures/db-guest/README.md):
 * on every boot it reports how PostgreSQL started (DBSTART clean|recovery, the PGLOG lines, DBCOUNT),
 * and with fsnap.load=1 commits numbered transactions, printing `ACK N <unix-ms>` after each commit.
 */
export interface DbGuestManifest {
  dir: string;
  disk: string;
  disk_format: 'qcow2' | 'raw';
  kernel: string;
  kernel_pvh?: string;
  initrd: string;
  append: string;
}

export async function buildDbGuest(signal?: AbortSignal): Promise<DbGuestManifest> {
  const built = await execa('bash', [path.join(REPO, 'scripts', 'build-db-guest.sh')], { reject: false, cancelSignal: signal });
  if (built.exitCode !== 0) throw new ForksnapError('TOOL_FAILED', `building the DB guest failed: ${built.stderr.slice(-2000)}`, {});
  const dir = built.stdout.trim().split('\n').at(-1)!;
  return JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')) as DbGuestManifest;
}

/** A spec booting the DB guest from `disk` (a qcow2 overlay or a snapshot image). */
export function dbGuestSpec(guest: DbGuestManifest, options: { name: string; disk: string; diskFormat: 'qcow2' | 'raw'; dir: string; load: boolean; memoryMiB?: number }): VmSpec {
  return parseVmSpec({
    name: options.name,
    memoryMiB: options.memoryMiB ?? 1024,
    machine: 'q35',
    accel: 'tcg',
    boot: { kernel: guest.kernel_pvh ?? guest.kernel, initrd: guest.initrd, append: `${guest.append}${options.load ? ' fsnap.load=1' : ''}` },
    disks: [{ id: 'root', path: options.disk, format: options.diskFormat }],
    // The load driver stands for network clients: it commits only while the NIC has carrier.
    nics: [{ id: 'net0', model: 'virtio-net-pci', backend: { type: 'user' } }],
    serial: [{ type: 'file', path: path.join(options.dir, 'console.log') }, { type: 'socket', path: path.join(options.dir, 'control.sock') }],
  }, options.dir, `${options.name} spec`);
}

export interface DbStart {
  verdict: 'clean' | 'recovery' | 'unknown';
  logLines: string[];
  maxN: number;
  rows: number;
}

/** Collects what the DB guest reports: its start-up verdict and the ACKs with their host arrival time. */
export class DbGuestReport {
  readonly acks: { n: number; at: number }[] = [];
  #start: Partial<DbStart> & { logLines: string[] } = { logLines: [] };
  #startDone: Promise<DbStart>;
  #resolveStart!: (start: DbStart) => void;

  constructor(readonly channel: ControlChannel) {
    this.#startDone = new Promise((resolve) => (this.#resolveStart = resolve));
    channel.onLine((line) => this.#line(line));
  }

  static async connect(dir: string, timeoutMs = 300_000): Promise<DbGuestReport> {
    return new DbGuestReport(await ControlChannel.connect(path.join(dir, 'control.sock'), timeoutMs));
  }

  /** The start-up report of this boot (DBSTART … DBREADY). */
  async started(timeoutMs = 300_000): Promise<DbStart> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new ForksnapError('PHASE_TIMEOUT', `the DB guest did not report DBREADY within ${timeoutMs} ms`, {})), timeoutMs);
    });
    try {
      return await Promise.race([this.#startDone, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ask the guest for the table's current max(n) and row count. */
  async count(): Promise<{ maxN: number; rows: number }> {
    const line = await this.channel.request('count', (l) => l.startsWith('DBCOUNT') || l.startsWith('ERR count'));
    const parsed = /max=(\d+) count=(\d+)/.exec(line);
    if (!parsed) throw new ForksnapError('INTERNAL', `the DB guest could not count: ${line}`, {});
    return { maxN: Number(parsed[1]), rows: Number(parsed[2]) };
  }

  lastAck(): number {
    return this.acks.at(-1)?.n ?? 0;
  }

  async waitForAck(n: number, timeoutMs = 120_000): Promise<void> {
    if (this.lastAck() >= n) return;
    await this.channel.waitForLine((line) => /^ACK (\d+)/.test(line) && Number(line.split(' ')[1]) >= n, timeoutMs);
  }

  close(): void {
    this.channel.close();
  }

  #line(line: string): void {
    const ack = /^ACK (\d+)/.exec(line);
    if (ack) {
      this.acks.push({ n: Number(ack[1]), at: Date.now() });
      return;
    }
    const start = /^DBSTART (\w+)/.exec(line);
    if (start) this.#start = { verdict: start[1] as DbStart['verdict'], logLines: [] };
    else if (line.startsWith('PGLOG ')) this.#start.logLines.push(line.slice(6));
    else if (line.startsWith('DBCOUNT') && this.#start.verdict) {
      const parsed = /max=(\d+) count=(\d+)/.exec(line);
      if (parsed) Object.assign(this.#start, { maxN: Number(parsed[1]), rows: Number(parsed[2]) });
    } else if (line === 'DBREADY' && this.#start.verdict) {
      this.#resolveStart({ verdict: this.#start.verdict, logLines: this.#start.logLines, maxN: this.#start.maxN ?? 0, rows: this.#start.rows ?? 0 });
    }
  }
}

/** Transactions per second acknowledged in [from, to) (host clock, ms). */
export function ackRate(acks: readonly { n: number; at: number }[], from: number, to: number): number {
  const inWindow = acks.filter((ack) => ack.at >= from && ack.at < to).length;
  return to > from ? inWindow / ((to - from) / 1000) : 0;
}

/** The longest gap between consecutive acknowledgements in [from, to]: the downtime the DB client saw. */
export function longestAckGap(acks: readonly { n: number; at: number }[], from: number, to: number): number {
  const times = acks.filter((ack) => ack.at >= from && ack.at <= to).map((ack) => ack.at);
  let longest = 0;
  for (let i = 1; i < times.length; i++) longest = Math.max(longest, times[i]! - times[i - 1]!);
  return longest;
}
