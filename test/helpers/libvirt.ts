import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { ControlChannel } from './control-channel.js';
import { testGuest } from './test-guest.js';

/**
 * Real libvirt for the tests: libvirtd and virtlogd started by hand when none answers (no systemd
 * here or in CI; the default network is never started: no bridge, no dnsmasq), TCG domains
 * (`type='qemu'`) of the test guest with a qcow2 and a raw disk, an e1000 NIC on a socket backend
 * (`<interface type='client'>`, connecting to a TCP listener the test owns) and serial ports on TCP
 * (console) and a UNIX socket (the guest's control channel). Every domain and file a test creates
 * is removed by `destroy()`, also when the test failed.
 */
export const LIBVIRT_URI = 'qemu:///system';

export async function virsh(...args: string[]): Promise<string> {
  const result = await execa('virsh', ['-c', LIBVIRT_URI, ...args], { reject: false, all: true });
  if (result.exitCode !== 0) throw new Error(`virsh ${args.join(' ')} failed (${result.exitCode}): ${result.all}`);
  return String(result.stdout ?? '').trim();
}

export async function ensureLibvirtd(): Promise<void> {
  const answers = async () => (await execa('virsh', ['-c', LIBVIRT_URI, 'version'], { reject: false, timeout: 10_000 })).exitCode === 0;
  if (await answers()) return;
  // Never autostart the default network: it needs a bridge and dnsmasq.
  await rm('/etc/libvirt/qemu/networks/autostart/default.xml', { force: true });
  await execa('virtlogd', ['-d'], { reject: false });
  const started = await execa('libvirtd', ['-d'], { reject: false, all: true });
  for (let i = 0; i < 100; i++) {
    if (await answers()) return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`libvirtd does not answer on ${LIBVIRT_URI} (libvirtd -d: ${started.exitCode} ${started.all}); run \`bash .ci/run\` or scripts/setup.sh, which installs libvirt-daemon-system`);
}

export interface LibvirtGuest {
  readonly domain: string;
  readonly dir: string;
  readonly disks: readonly string[];
  readonly control: ControlChannel;
  /** TCP connections the NIC's socket backend made to the test's listener (the parent's one, never a child's). */
  readonly nicConnections: () => number;
  /** TCP connections made to the domain's serial port (we connect once ourselves, to read the console). */
  readonly consoleLog: () => string;
  readonly pid: () => Promise<number>;
  destroy(): Promise<void>;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Define and start a TCG domain of the test guest; waits until its workload ticks. */
export async function startLibvirtGuest(options: { domain: string; dir: string; emulator?: string; memoryMiB?: number; append?: string }): Promise<LibvirtGuest> {
  const guest = await testGuest();
  await mkdir(options.dir, { recursive: true });
  // libvirt-qemu must reach the files: the directory is world-traversable, the images are chowned
  // by libvirt (dynamic_ownership) when the domain starts.
  await chmod(options.dir, 0o755);
  const disk0 = path.join(options.dir, 'disk0.qcow2');
  const disk1 = path.join(options.dir, 'disk1.raw');
  // A standalone copy: libvirt chowns a disk's backing files, and two domains must not share one.
  await execa('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', guest.dataDisk, disk0]);
  await execa('qemu-img', ['create', '-q', '-f', 'raw', disk1, '64M']);
  await execa('mkfs.ext4', ['-q', '-F', disk1]);

  let connections = 0;
  const sockets = new Set<net.Socket>();
  const nicPeer = net.createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
  });
  const nicPort = await freePort();
  await new Promise<void>((resolve) => nicPeer.listen(nicPort, '127.0.0.1', resolve));
  const serialPort = await freePort();
  const control = path.join(options.dir, 'ctl.sock');
  const xml = `<domain type='qemu'>
  <name>${options.domain}</name>
  <memory unit='MiB'>${options.memoryMiB ?? 256}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>${guest.kernel}</kernel><initrd>${guest.initrd}</initrd><cmdline>${guest.append} ${options.append ?? 'fsnap.workload=1'}</cmdline></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>${options.emulator ?? '/usr/bin/qemu-system-x86_64'}</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${disk0}'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${disk1}'/><target dev='vdb' bus='virtio'/></disk>
    <interface type='client'><mac address='52:54:00:12:34:56'/><source address='127.0.0.1' port='${nicPort}'/><model type='e1000'/></interface>
    <serial type='tcp'><source mode='bind' host='127.0.0.1' service='${serialPort}'/><protocol type='raw'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='${control}'/><target port='1'/></serial>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
`;
  const xmlFile = path.join(options.dir, 'domain.xml');
  await writeFile(xmlFile, xml);
  await virsh('define', xmlFile);
  let consoleText = '';
  let consoleSocket: net.Socket | undefined;
  const destroy = async () => {
    consoleSocket?.destroy();
    for (const socket of sockets) socket.destroy();
    nicPeer.close();
    await execa('virsh', ['-c', LIBVIRT_URI, 'destroy', options.domain], { reject: false });
    await execa('virsh', ['-c', LIBVIRT_URI, 'undefine', options.domain, '--snapshots-metadata', '--managed-save'], { reject: false });
    await rm(options.dir, { recursive: true, force: true });
  };
  try {
    await virsh('start', options.domain);
    consoleSocket = net.connect(serialPort, '127.0.0.1');
    consoleSocket.setEncoding('utf8');
    consoleSocket.on('data', (chunk: string) => (consoleText = (consoleText + chunk).slice(-100_000)));
    consoleSocket.on('error', () => undefined);
    const channel = await ControlChannel.connect(control, 120_000);
    await channel.waitForTick(3);
    return {
      domain: options.domain,
      dir: options.dir,
      disks: [disk0, disk1],
      control: channel,
      nicConnections: () => connections,
      consoleLog: () => consoleText,
      pid: async () => Number((await execa('cat', [`/run/libvirt/qemu/${options.domain}.pid`])).stdout.trim()),
      destroy: async () => {
        channel.close();
        await destroy();
      },
    };
  } catch (error) {
    await destroy();
    throw error;
  }
}

/** What libvirt says of a domain: state, disk sources, and its live XML's disk sources. */
export async function libvirtView(domain: string): Promise<{ state: string; blklist: string; xmlSources: string[] }> {
  const state = await virsh('domstate', domain);
  const blklist = await virsh('domblklist', domain, '--details');
  const xml = await virsh('dumpxml', domain);
  const xmlSources = [...xml.matchAll(/<source (?:file|dev)='([^']+)'/g)].map((match) => match[1]!);
  return { state, blklist, xmlSources };
}
