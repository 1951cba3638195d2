import net from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';

/** One `RATE <MiB/s> <total MiB> <uptime cs>` line of the guest's memory-dirtying loop (`dirty N`). */
export interface RateSample {
  /** The guest's own measure over its last ~250 ms of uptime. */
  readonly mibPerS: number;
  /** MiB rewritten since the loop started. */
  readonly totalMiB: number;
  /** The guest's uptime (its own clock) when it measured, in ms; absent from older guests' lines. */
  readonly uptimeMs?: number | undefined;
  /** Host arrival time (Date.now()). */
  readonly at: number;
}

/**
 * Client of the test guest's control serial port (ttyS1 as a UNIX socket chardev, see
 * test/fixtures/guest/control.sh): one command per line, one reply line each. TICK lines of the
 * guest's write workload and RATE lines of its memory-dirtying loop arrive unasked: the highest
 * tick is kept with its arrival time, every RATE line in `rates`.
 */
export class ControlChannel {
  #buffer = '';
  #lines: string[] = [];
  #waiters: { match: (line: string) => boolean; resolve: (line: string) => void }[] = [];
  readonly #listeners = new Set<(line: string) => void>();
  lastTick = 0;
  lastTickAt = 0;
  readonly ticks: { n: number; at: number }[] = [];
  readonly rates: RateSample[] = [];

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#receive(chunk));
    socket.on('error', () => {});
  }

  static async connect(path: string, timeoutMs = 60_000): Promise<ControlChannel> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection({ path });
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        const channel = new ControlChannel(socket);
        await channel.waitReady(Math.max(1000, deadline - Date.now()));
        return channel;
      } catch (error) {
        if (Date.now() > deadline) throw new Error(`guest control channel ${path} not ready: ${(error as Error).message}`);
        await delay(250);
      }
    }
  }

  /** Send `ping` until the guest answers PONG (its init has finished). */
  async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      this.socket.write('ping\n');
      const line = await this.waitForLine((l) => l === 'PONG', 1000).catch(() => undefined);
      if (line) return;
    }
    throw new Error('guest did not answer ping');
  }

  /** Every line the guest sends, as it arrives (for protocols with unasked lines, like ACK). */
  onLine(listener: (line: string) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Send a command and resolve with the first reply line matching `reply`. */
  async request(command: string, reply: (line: string) => boolean, timeoutMs = 15_000): Promise<string> {
    const answer = this.waitForLine(reply, timeoutMs);
    this.socket.write(`${command}\n`);
    return answer;
  }

  async command(command: string, timeoutMs = 15_000): Promise<string> {
    const word = command.split(' ')[0]!;
    const expected = (line: string) => (word === 'ping' ? line === 'PONG' : word === 'status' ? line.startsWith('STATUS') : line.startsWith(`OK ${word}`) || line.startsWith('ERR'));
    const reply = this.waitForLine(expected, timeoutMs);
    this.socket.write(`${command}\n`);
    return reply;
  }

  /** Wait until a TICK greater than `n` has arrived. */
  async waitForTick(n: number, timeoutMs = 30_000): Promise<number> {
    if (this.lastTick > n) return this.lastTick;
    await this.waitForLine((line) => /^TICK (\d+)$/.test(line) && Number(line.slice(5)) > n, timeoutMs);
    return this.lastTick;
  }

  /** Wait until `count` RATE lines newer than now have arrived; resolves with them. */
  async waitForRates(count: number, timeoutMs = 30_000): Promise<RateSample[]> {
    const first = this.rates.length;
    const deadline = Date.now() + timeoutMs;
    while (this.rates.length < first + count) {
      await this.waitForLine((line) => line.startsWith('RATE '), Math.max(1, deadline - Date.now()));
    }
    return this.rates.slice(first, first + count);
  }

  waitForLine(match: (line: string) => boolean, timeoutMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const waiter = { match, resolve: (line: string) => { clearTimeout(timer); resolve(line); } };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new Error(`no matching line from the guest within ${timeoutMs} ms (last lines: ${this.#lines.slice(-5).join(' | ')})`));
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  #receive(chunk: string): void {
    this.#buffer += chunk;
    let index: number;
    while ((index = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, index).replace(/\r$/, '').trim();
      this.#buffer = this.#buffer.slice(index + 1);
      if (!line) continue;
      this.#lines.push(line);
      if (this.#lines.length > 200) this.#lines.shift();
      const tick = /^TICK (\d+)$/.exec(line);
      if (tick) {
        this.lastTick = Math.max(this.lastTick, Number(tick[1]));
        this.lastTickAt = Date.now();
        this.ticks.push({ n: Number(tick[1]), at: Date.now() });
      }
      const rate = /^RATE (\d+(?:\.\d+)?) (\d+)(?: (\d+))?$/.exec(line);
      if (rate) this.rates.push({ mibPerS: Number(rate[1]), totalMiB: Number(rate[2]), uptimeMs: rate[3] === undefined ? undefined : Number(rate[3]) * 10, at: Date.now() });
      for (const listener of [...this.#listeners]) listener(line);
      for (const waiter of [...this.#waiters]) {
        if (waiter.match(line)) {
          this.#waiters = this.#waiters.filter((w) => w !== waiter);
          waiter.resolve(line);
        }
      }
    }
  }
}
