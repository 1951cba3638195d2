import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { ControlChannel } from '../demo/guest-control.js';
import { ForksnapError } from '../errors.js';
import { parseVmSpec } from '../vm/spec.js';
import { startVm } from '../vm/start-vm.js';
import { stopVm } from '../vm/stop-vm.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/**
 * One benchmark guest: the test guest (scripts/build-test-guest.sh) under TCG with `memoryMiB` of
 * RAM, a qcow2 data disk over the cached template, no NIC, no tick workload. Once booted it holds
 * `ballastMiB` of static non-zero data and rewrites `dirtyMiB` in a loop (control commands
 * `ballast` and `dirty`), so the RAM to capture grows with the guest and the guest keeps writing.
 */
export interface BenchGuest {
  readonly name: string;
  readonly pid: number;
  readonly qmpSocket: string;
  readonly control: ControlChannel;
  stop(): Promise<void>;
}

export async function buildTestGuest(signal: AbortSignal): Promise<{ kernel: string; initrd: string; dataDisk: string; append: string }> {
  const built = await execa('bash', [path.join(REPO, 'scripts', 'build-test-guest.sh')], { reject: false, cancelSignal: signal });
  if (built.exitCode !== 0) throw new ForksnapError('TOOL_FAILED', `building the test guest failed: ${built.stderr.slice(-2000)}`, {});
  const dir = built.stdout.trim().split('\n').at(-1)!;
  return JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')) as { kernel: string; initrd: string; dataDisk: string; append: string };
}

export async function startBenchGuest(options: { paths: Paths; dir: string; name: string; memoryMiB: number; ballastMiB: number; dirtyMiB: number; shutdownTouchMiB?: number; log: Logger; signal: AbortSignal }): Promise<BenchGuest> {
  const guest = await buildTestGuest(options.signal);
  await mkdir(options.dir, { recursive: true });
  const disk = path.join(options.dir, 'data.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', guest.dataDisk, '-F', 'raw', disk]);
  const controlSocket = path.join(options.dir, 'control.sock');
  const spec = parseVmSpec({
    name: options.name,
    memoryMiB: options.memoryMiB,
    machine: 'q35',
    accel: 'tcg',
    boot: { kernel: guest.kernel, initrd: guest.initrd, append: guest.append },
    disks: [{ id: 'data', path: disk, format: 'qcow2' }],
    serial: [{ type: 'file', path: path.join(options.dir, 'console.log') }, { type: 'socket', path: controlSocket }],
  }, options.dir, 'bench spec');
  await writeFile(path.join(options.dir, 'spec.json'), JSON.stringify(spec, null, 2));
  const record = await startVm(options.paths, spec, { log: options.log, signal: options.signal });
  let control: ControlChannel | undefined;
  const stop = async () => {
    control?.close();
    await stopVm(options.paths, options.name, { log: options.log }).catch((error: unknown) => options.log.warn({ err: (error as Error).message }, 'stopping the bench guest failed'));
  };
  try {
    control = await ControlChannel.connect(controlSocket, 180_000);
    // Filling guest RAM under TCG runs at ~50 MiB/s.
    await expectOk(control, `ballast ${options.ballastMiB}`, 30_000 + options.ballastMiB * 200);
    await expectOk(control, `dirty ${options.dirtyMiB}`, 30_000 + options.dirtyMiB * 200);
    if (options.shutdownTouchMiB) await expectOk(control, `shutdowntouch ${options.shutdownTouchMiB}`, 10_000);
    await control.waitForRates(2, 30_000);
    return { name: options.name, pid: record.pid!, qmpSocket: record.qmpSocket, control, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

async function expectOk(control: ControlChannel, command: string, timeoutMs: number): Promise<void> {
  const reply = await control.command(command, timeoutMs);
  if (reply !== `OK ${command}`) throw new ForksnapError('TOOL_FAILED', `the bench guest answered "${reply}" to "${command}"`, { command, reply });
}
