import { mkdir, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { ControlChannel } from '../demo/guest-control.js';

/**
 * What incremental storage costs and saves, through the real CLI (issue 12's numbers): a test
 * guest with a raw data disk of SIZE MiB of random data (parent disk outside the measured
 * filesystem), forksnap's state dir on its own ext4 loop filesystem (no reflink: the fleecing
 * backend, the default there), and per size:
 *   1. snapshot 1 (the VM's first: full)
 *   2. the guest rewrites ~1 % of the disk (10 random-data extents, O_SYNC), snapshot 2 (default:
 *      an increment written straight from the child's disk)
 *   3. the guest rewrites another ~1 %, snapshot 3 with --full (what every snapshot cost before)
 * Reported per snapshot: bytes written to the state filesystem's loop device (sectors written,
 * /sys/block/loopN/stat, after a sync), the snapshot's own size on disk, time to image (halt to
 * the image written, meta.json) and the job's wall time. Not a test: numbers depend on the host.
 * Run: scripts/bench-store.sh (SIZES=1024,8192, BENCH_DIR=/var/tmp/forksnap-store-bench).
 */
const MiB = 1024 * 1024;

interface Row { size: number; snapshot: string; storage: string; writtenBytes: number; ownBytes: number; timeToImageMs: number; wallMs: number; fullReason?: string; base?: string }

export async function main(): Promise<void> {
  const sizes = (process.env.SIZES ?? '1024,8192').split(',').map(Number);
  const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
  const built = await execa('bash', [path.join(repo, 'scripts', 'build-test-guest.sh')]);
  const guestDir = built.stdout.trim().split('\n').at(-1)!;
  const guest = JSON.parse(await readFile(path.join(guestDir, 'manifest.json'), 'utf8')) as { kernel: string; initrd: string; dataDisk: string; append: string };
  const root = process.env.BENCH_DIR ?? '/var/tmp/forksnap-store-bench';
  const rows: Row[] = [];
  for (const size of sizes) rows.push(...(await benchSize(repo, guest, root, size)));
  console.log(JSON.stringify({ rows }, null, 2));
  console.log('\n| data MiB | snapshot | stored as | written to the store fs | own size | time to image | job wall |\n|---|---|---|---|---|---|---|');
  for (const row of rows) console.log(`| ${row.size} | ${row.snapshot} | ${row.storage} | ${(row.writtenBytes / MiB).toFixed(1)} MiB | ${(row.ownBytes / MiB).toFixed(1)} MiB | ${(row.timeToImageMs / 1000).toFixed(1)} s | ${(row.wallMs / 1000).toFixed(1)} s |`);
}

async function benchSize(repo: string, guest: { kernel: string; initrd: string; dataDisk: string; append: string }, root: string, size: number): Promise<Row[]> {
  const dir = path.join(root, `size-${size}`);
  const mount = path.join(dir, 'statefs');
  const fsImage = path.join(dir, 'statefs.img');
  await execa('umount', [mount], { reject: false });
  await rm(dir, { recursive: true, force: true });
  await mkdir(mount, { recursive: true });
  await execa('truncate', ['-s', `${Math.ceil((size * 3.5 + 4096) / 1024)}G`, fsImage]);
  await execa('mkfs.ext4', ['-q', '-F', fsImage]);
  await execa('mount', ['-o', 'loop', fsImage, mount]);
  const loop = path.basename(await realpath((await execa('findmnt', ['-n', '-o', 'SOURCE', mount])).stdout.trim()));
  const state = path.join(mount, 'state');
  const cli = (args: string[]) => execa('node', [path.join(repo, 'bin', 'forksnap.js'), ...args], { reject: false, env: { FORKSNAP_STATE_DIR: state, FORKSNAP_LOG_LEVEL: 'warn' } });
  try {
    const disk = path.join(dir, 'big.raw');
    const data = path.join(dir, 'data.raw');
    await execa('cp', [guest.dataDisk, data]);
    await execa('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=4M', `count=${size / 4}`, 'status=none']);
    const control = path.join(dir, 'ctl.sock');
    const spec = {
      name: `store${size}`, memoryMiB: 256, machine: 'q35', accel: 'tcg',
      boot: { kernel: guest.kernel, initrd: guest.initrd, append: `${guest.append} fsnap.workload=1` },
      disks: [{ id: 'data', path: data, format: 'raw' }, { id: 'big', path: disk, format: 'raw' }],
      nics: [], serial: [{ type: 'file', path: path.join(dir, 'console.log') }, { type: 'socket', path: control }], extraArgs: [],
    };
    await writeFile(path.join(dir, 'spec.json'), JSON.stringify(spec));
    const started = await cli(['vm', 'start', path.join(dir, 'spec.json')]);
    if (started.exitCode !== 0) throw new Error(`vm start: ${started.stderr}`);
    const channel = await ControlChannel.connect(control, 120_000);
    const rows: Row[] = [];
    const written = async () => {
      await execa('sync', ['-f', mount]);
      return Number((await readFile(`/sys/block/${loop}/stat`, 'utf8')).trim().split(/\s+/)[6]) * 512;
    };
    const snapshot = async (name: string, extra: string[]) => {
      const before = await written();
      const t0 = performance.now();
      const made = await cli(['snapshot', 'create', spec.name, '--json', '--name', name, '--disk-backend', 'fleecing', ...extra]);
      const wallMs = performance.now() - t0;
      if (made.exitCode !== 0) throw new Error(`snapshot ${name}: exit ${made.exitCode}: ${made.stderr}`);
      const result = JSON.parse(made.stdout.trim().split('\n').at(-1)!) as { snapshot?: unknown } & Record<string, unknown>;
      const meta = (result.snapshot ?? result) as { timeToImageMs: number; disks: { id: string; fullReason?: string; image: { backing?: { snapshot: string } } }[] };
      const listed = JSON.parse((await cli(['snapshot', 'list', spec.name, '--json'])).stdout) as { id: string; sizeOnDiskBytes: number }[];
      const big = meta.disks.find((entry) => entry.id === 'big')!;
      rows.push({
        size, snapshot: name, storage: big.image.backing ? 'increment' : 'full', writtenBytes: (await written()) - before,
        ownBytes: listed.find((entry) => entry.id === name)!.sizeOnDiskBytes, timeToImageMs: meta.timeToImageMs, wallMs,
        ...(big.fullReason ? { fullReason: big.fullReason } : {}), ...(big.image.backing ? { base: big.image.backing.snapshot } : {}),
      });
      console.error(JSON.stringify(rows.at(-1)));
    };
    const changeOnePercent = async () => {
      // 10 extents of size/1000 MiB (at least 1 MiB) spread over the disk, random data, synchronous.
      const extent = Math.max(1, Math.round(size / 1000));
      for (let i = 0; i < 10; i++) {
        const seek = Math.floor(((i + Math.random() * 0.5) * size) / 10);
        const reply = await channel.request(`run dd if=/dev/urandom of=/dev/vdb bs=1M count=${extent} seek=${Math.min(seek, size - extent)} conv=fsync`, (line) => line.startsWith('OK run') || line.startsWith('ERR'), 600_000);
        if (!/^OK run 0 /.test(reply)) throw new Error(`guest dd: ${reply}`);
      }
    };
    await snapshot('s1', []);
    await changeOnePercent();
    await snapshot('s2', []);
    await changeOnePercent();
    await snapshot('s3', ['--full']);
    channel.close();
    await cli(['vm', 'stop', spec.name]);
    return rows;
  } finally {
    await cli(['vm', 'stop', `store${size}`]);
    await execa('umount', [mount], { reject: false });
    await rm(dir, { recursive: true, force: true });
  }
}
