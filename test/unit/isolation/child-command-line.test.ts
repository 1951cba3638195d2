import { describe, expect, it } from 'vitest';
import { buildChildArgv, CHILD_QMP_CHARDEV, type ChildDisk } from '../../../src/isolation/child-command-line.js';
import { parseArgv, parseOpts, type QemuOption } from '../../../src/qemu/command-line.js';
import type { ParentDisk, VmInventory } from '../../../src/vm/inspect.js';

const EXE = '/usr/libexec/qemu-patched/qemu-system-x86_64';
const QMP_SOCKET = '/var/lib/forksnap/work/job1/child-qmp.sock';

function disk(overrides: Partial<ParentDisk> & Pick<ParentDisk, 'id' | 'file'>): ParentDisk {
  return {
    device: overrides.id,
    qdev: undefined,
    nodeName: `#block${overrides.id}`,
    format: 'qcow2',
    virtualSize: 1 << 30,
    backingFiles: [],
    declaredBy: 'drive',
    ...overrides,
  };
}

function inventory(args: string[], disks: ParentDisk[] = [], cwd = '/vm'): VmInventory {
  // The parent's argv[0] differs from /proc/PID/exe on purpose: the child must run the exe.
  return { pid: 4242, exe: EXE, cwd, commandLine: parseArgv(['qemu-system-x86_64', ...args]), disks };
}

/** Build the child argv and read it back as options, minus the fixed tail forksnap appends. */
function childOptions(args: string[], disks: ParentDisk[] = [], childDisks: Record<string, ChildDisk> = {}, cwd = '/vm'): QemuOption[] {
  const argv = buildChildArgv(inventory(args, disks, cwd), new Map(Object.entries(childDisks)), QMP_SOCKET);
  return parseArgv(argv).options.slice(0, -TAIL.length);
}

function values(options: readonly QemuOption[], name: string): (string | undefined)[] {
  return options.filter((option) => option.name === name).map((option) => option.value);
}

const TAIL: QemuOption[] = [
  { name: 'display', value: 'none' },
  { name: 'monitor', value: 'none' },
  { name: 'chardev', value: `socket,id=${CHILD_QMP_CHARDEV},path=${QMP_SOCKET},server=on,wait=off` },
  { name: 'mon', value: `chardev=${CHILD_QMP_CHARDEV},mode=control` },
  { name: 'no-reboot' },
  { name: 'S' },
  { name: 'incoming', value: 'defer' },
];

describe('buildChildArgv: process, monitors and display', () => {
  it('runs the parent exe and ends with forksnap QMP, -no-reboot, -S and -incoming defer', () => {
    const argv = buildChildArgv(inventory(['-m', '512']), new Map(), QMP_SOCKET);
    expect(argv[0]).toBe(EXE);
    expect(parseArgv(argv).options).toEqual([{ name: 'm', value: '512' }, ...TAIL]);
  });

  it('fork-postcopy: the child\'s incoming capabilities come last, as -global migration.x-NAME', () => {
    const argv = buildChildArgv(inventory(['-m', '512']), new Map(), QMP_SOCKET, { capabilities: { 'postcopy-ram': true } });
    expect(parseArgv(argv).options).toEqual([{ name: 'm', value: '512' }, ...TAIL, { name: 'global', value: 'migration.x-postcopy-ram=on' }]);
  });

  it('drops monitors, daemonizing, pid files, VNC/SPICE, displays and the parent -S/-incoming', () => {
    const options = childOptions([
      '-name', 'guest=vm1',
      '-qmp', 'unix:/run/vm1.qmp,server=on,wait=off',
      '-monitor', 'stdio',
      '-daemonize',
      '-pidfile', '/run/vm1.pid',
      '-vnc', ':1',
      '-spice', 'port=5930',
      '-display', 'gtk',
      '-nographic',
      '-S',
      '-incoming', 'tcp:0:4444',
      '-no-reboot',
      '-no-shutdown',
      '-D', '/var/log/vm1.log',
      '-m', '1024',
    ]);
    expect(options).toEqual([{ name: 'name', value: 'guest=vm1' }, { name: 'm', value: '1024' }]);
  });

  it('keeps the parent\'s confinement: -sandbox, -runas and -chroot', () => {
    const args = ['-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny', '-runas', 'qemu', '-chroot', '/var/empty', '-m', '1024'];
    expect(childOptions(args)).toEqual(parseArgv(['q', ...args]).options);
  });

  it('gives the child host directory shares (-fsdev, -virtfs) read-only', () => {
    const options = childOptions([
      '-fsdev', 'local,id=fs0,path=/srv/share,security_model=mapped-xattr',
      '-virtfs', 'local,path=/srv/other,mount_tag=other,security_model=none,readonly=off',
    ]);
    expect(values(options, 'fsdev')).toEqual(['fsdriver=local,id=fs0,path=/srv/share,security_model=mapped-xattr,readonly=on']);
    expect(values(options, 'virtfs')).toEqual(['fsdriver=local,path=/srv/other,mount_tag=other,security_model=none,readonly=on']);
  });

  it('keeps devices and machine options in their original order', () => {
    const args = ['-machine', 'q35,accel=kvm', '-cpu', 'host', '-smp', '2', '-device', 'virtio-rng-pci,id=rng0', '-device', '{"driver":"virtio-balloon-pci","id":"b0"}', '-kernel', '/boot/vmlinuz', '-append', 'console=ttyS0 root=/dev/vda'];
    expect(childOptions(args)).toEqual(parseArgv(['q', ...args]).options);
  });
});

describe('buildChildArgv: character devices', () => {
  it('turns every chardev into a null backend with the same id and drops the monitor chardev', () => {
    const options = childOptions([
      '-chardev', 'socket,id=ser0,path=/run/ser0.sock,server=on,wait=off',
      '-serial', 'chardev:ser0',
      '-chardev', 'file,id=log0,path=/var/log/console.log',
      '-device', 'virtio-serial-pci',
      '-device', 'virtconsole,chardev=log0',
      '-chardev', 'socket,id=qmp0,path=/run/vm1.qmp,server=on,wait=off',
      '-mon', 'chardev=qmp0,mode=control',
    ]);
    expect(values(options, 'chardev')).toEqual(['null,id=ser0', 'null,id=log0']);
    expect(values(options, 'mon')).toEqual([]);
    expect(values(options, 'serial')).toEqual(['chardev:ser0']);
    expect(values(options, 'device')).toEqual(['virtio-serial-pci', 'virtconsole,chardev=log0']);
  });

  it('keeps mux=on for a multiplexed chardev shared by a monitor and a serial port', () => {
    const options = childOptions([
      '-chardev', 'stdio,id=char0,mux=on,signal=off',
      '-mon', 'chardev=char0,mode=readline',
      '-serial', 'chardev:char0',
    ]);
    expect(values(options, 'chardev')).toEqual(['null,id=char0,mux=on']);
    expect(values(options, 'serial')).toEqual(['chardev:char0']);
    expect(values(options, 'mon')).toEqual([]);
  });

  it('points -serial/-parallel/-virtioconsole backends at null, keeping chardev: references and none', () => {
    const options = childOptions([
      '-serial', 'mon:stdio',
      '-serial', 'tcp::4444,server=on,wait=off',
      '-serial', 'none',
      '-serial', 'chardev:s3',
      '-parallel', '/dev/parport0',
      '-virtioconsole', 'pty',
    ]);
    expect(values(options, 'serial')).toEqual(['null', 'null', 'none', 'chardev:s3']);
    expect(values(options, 'parallel')).toEqual(['null']);
    expect(values(options, 'virtioconsole')).toEqual(['null']);
  });
});

describe('buildChildArgv: networking', () => {
  it('replaces tap, socket and bridge netdevs by unconnected hub ports with the same id', () => {
    const options = childOptions([
      '-netdev', 'tap,id=n0,ifname=tap0,script=no,downscript=no',
      '-device', 'virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01',
      '-netdev', 'socket,id=n1,connect=127.0.0.1:1234',
      '-netdev', '{"type":"bridge","id":"n2","br":"br0"}',
    ]);
    const netdevs = values(options, 'netdev').map((value) => parseOpts(value!, 'type'));
    expect(netdevs.map((entries) => entries.filter(([key]) => key !== 'hubid'))).toEqual([
      [['type', 'hubport'], ['id', 'n0']],
      [['type', 'hubport'], ['id', 'n1']],
      [['type', 'hubport'], ['id', 'n2']],
    ]);
    // Each port sits on a hub of its own, so two ports never talk to each other.
    const hubs = netdevs.map((entries) => entries.find(([key]) => key === 'hubid')?.[1]);
    expect(new Set(hubs).size).toBe(3);
    expect(values(options, 'device')).toEqual(['virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01']);
  });

  it('keeps user networking restricted, with its addressing but without forwards, SMB or TFTP', () => {
    const options = childOptions([
      '-netdev', 'user,id=n0,net=10.0.5.0/24,dhcpstart=10.0.5.20,hostname=vm1,restrict=off,hostfwd=tcp::2222-:22,hostfwd=udp::5353-:53,guestfwd=tcp:10.0.5.100:80-cmd:nc host 80,smb=/srv/share,tftp=/srv/tftp,bootfile=pxelinux.0',
    ]);
    expect(values(options, 'netdev')).toEqual(['user,id=n0,restrict=on,net=10.0.5.0/24,dhcpstart=10.0.5.20,hostname=vm1']);
  });

  it('rewrites -nic user keeping model and mac, restricted', () => {
    const options = childOptions(['-nic', 'user,model=e1000,mac=52:54:00:12:34:56,hostfwd=tcp::8080-:80']);
    expect(values(options, 'nic')).toEqual(['user,restrict=on,model=e1000,mac=52:54:00:12:34:56']);
  });

  it('rewrites -nic tap to a hub port keeping the model', () => {
    const [nic] = values(childOptions(['-nic', 'tap,ifname=tap3,model=virtio-net-pci']), 'nic');
    const entries = parseOpts(nic!, 'type');
    expect(entries.find(([key]) => key === 'type')).toEqual(['type', 'hubport']);
    expect(entries.find(([key]) => key === 'model')).toEqual(['model', 'virtio-net-pci']);
    expect(entries.some(([key]) => key === 'ifname')).toBe(false);
  });

  it('keeps legacy -net nic, keeps -net user restricted and drops other -net backends', () => {
    const options = childOptions([
      '-net', 'nic,model=virtio,macaddr=52:54:00:00:00:09',
      '-net', 'user,net=10.0.2.0/24,hostfwd=tcp::2222-:22',
      '-net', 'tap,ifname=tap0,script=no',
      '-net', 'socket,listen=:1234',
    ]);
    expect(values(options, 'net')).toEqual(['nic,model=virtio,macaddr=52:54:00:00:00:09', 'user,restrict=on,net=10.0.2.0/24']);
  });

  // QEMU: "-nic none" / "-net none" mean "no network at all" and switch off the default NIC.
  // Rewriting or dropping them gives the child a NIC the parent does not have.
  it('keeps -nic none as it is (no NIC in the parent means no NIC in the child)', () => {
    expect(values(childOptions(['-nic', 'none']), 'nic')).toEqual(['none']);
  });

  it('keeps -net none, which disables the default NIC', () => {
    expect(values(childOptions(['-net', 'none']), 'net')).toEqual(['none']);
  });

  it('turns every audio backend into "none" with the same id', () => {
    const options = childOptions(['-audiodev', 'pa,id=snd0,server=/run/pulse/native', '-audiodev', '{"driver":"alsa","id":"snd1"}', '-device', 'intel-hda', '-device', 'hda-duplex,audiodev=snd0']);
    expect(values(options, 'audiodev')).toEqual(['none,id=snd0', 'none,id=snd1']);
    expect(values(options, 'device')).toEqual(['intel-hda', 'hda-duplex,audiodev=snd0']);
  });
});

describe('buildChildArgv: -drive disks', () => {
  const system = disk({ id: 'd0', file: '/vm/disk.qcow2' });
  const child: Record<string, ChildDisk> = { d0: { path: '/state/work/job1/d0.qcow2', format: 'qcow2' } };

  it('points a snapshotted -drive at the child image and drops backing*/file.* keys', () => {
    const options = childOptions(
      ['-drive', 'file=/vm/disk.qcow2,if=virtio,id=d0,format=qcow2,cache=none,backing.file.filename=/img/base.qcow2,file.locking=off,discard=unmap,snapshot=off'],
      [system],
      child,
    );
    expect(values(options, 'drive')).toEqual(['if=virtio,id=d0,cache=none,discard=unmap,file=/state/work/job1/d0.qcow2,format=qcow2']);
  });

  it('matches a relative file= path against the parent cwd', () => {
    const options = childOptions(['-drive', 'file=images/../disk.qcow2,if=none,id=d0'], [system], child, '/vm');
    expect(values(options, 'drive')).toEqual(['if=none,id=d0,file=/state/work/job1/d0.qcow2,format=qcow2']);
  });

  it('leaves a relative path alone when it resolves elsewhere from the parent cwd', () => {
    const options = childOptions(['-drive', 'file=disk.qcow2,if=none,id=d0'], [system], child, '/elsewhere');
    expect(values(options, 'drive')).toEqual(['file=disk.qcow2,if=none,id=d0']);
  });

  it('escapes commas in the child image path', () => {
    const options = childOptions(['-drive', 'file=/vm/disk.qcow2,id=d0'], [system], { d0: { path: '/state/a,b/d0.raw', format: 'raw' } });
    const [drive] = values(options, 'drive');
    expect(drive).toBe('id=d0,file=/state/a,,b/d0.raw,format=raw');
    expect(parseOpts(drive!)).toContainEqual(['file', '/state/a,b/d0.raw']);
  });

  it('leaves cdroms, read-only drives and disks without a child image unchanged', () => {
    const args = [
      '-drive', 'file=/iso/install.iso,media=cdrom,readonly=on',
      '-drive', 'file=/img/seed.raw,if=virtio,readonly=on,format=raw',
      '-drive', 'file=/vm/data.qcow2,if=virtio,id=d1',
    ];
    const options = childOptions(args, [disk({ id: 'd1', file: '/vm/data.qcow2' })], {});
    expect(values(options, 'drive')).toEqual([args[1], args[3], args[5]]);
  });

  it('replaces a legacy -hda image by a -drive on the child image at the same index', () => {
    const options = childOptions(['-hda', 'disk.qcow2', '-cdrom', '/iso/x.iso'], [disk({ id: 'ide0-hd0', file: '/vm/disk.qcow2' })], { 'ide0-hd0': { path: '/state/c.qcow2', format: 'qcow2' } });
    expect(options).toEqual([
      { name: 'drive', value: 'file=/state/c.qcow2,format=qcow2,index=0,media=disk' },
      { name: 'cdrom', value: '/iso/x.iso' },
    ]);
  });
});

describe('buildChildArgv: -blockdev disks', () => {
  const top = disk({ id: 'vda', device: '', nodeName: 'top', file: '/img/top.qcow2', declaredBy: 'blockdev' });
  const child: Record<string, ChildDisk> = { vda: { path: '/state/vda.qcow2', format: 'qcow2' } };

  it('replaces a JSON chain by one blockdev with the top node-name and drops the lower nodes', () => {
    const untouched = '{"driver":"file","filename":"/img/cd.iso","node-name":"cd-file","read-only":true}';
    const options = childOptions([
      '-blockdev', '{"driver":"file","filename":"/img/base.qcow2","node-name":"base-file","read-only":true}',
      '-blockdev', '{"driver":"qcow2","file":"base-file","node-name":"base","read-only":true}',
      '-blockdev', '{"driver":"file","filename":"/img/top.qcow2","node-name":"top-file","aio":"threads"}',
      '-blockdev', '{"driver":"qcow2","file":"top-file","backing":"base","node-name":"top","cache":{"direct":true,"no-flush":false},"discard":"unmap"}',
      '-blockdev', untouched,
      '-device', 'virtio-blk-pci,drive=top,id=vda-dev',
    ], [top], child);
    expect(options.map((option) => option.name)).toEqual(['blockdev', 'blockdev', 'device']);
    expect(JSON.parse(options[0]!.value!)).toEqual({
      driver: 'qcow2',
      'node-name': 'top',
      cache: { direct: true, 'no-flush': false },
      discard: 'unmap',
      file: { driver: 'file', filename: '/state/vda.qcow2' },
    });
    expect(options[1]!.value).toBe(untouched);
  });

  it('replaces a dotted-key chain the same way, dropping the file node it references', () => {
    const options = childOptions([
      '-blockdev', 'driver=file,node-name=f0,filename=/img/top.qcow2',
      '-blockdev', 'driver=qcow2,node-name=top,file=f0,detect-zeroes=on',
      '-blockdev', 'driver=raw,node-name=other,file.driver=file,file.filename=/img/other.raw',
    ], [top], { vda: { path: '/state/vda.raw', format: 'raw' } });
    expect(options).toHaveLength(2);
    expect(JSON.parse(options[0]!.value!)).toEqual({ driver: 'raw', 'node-name': 'top', 'detect-zeroes': 'on', file: { driver: 'file', filename: '/state/vda.raw' } });
    expect(options[1]!.value).toBe('driver=raw,node-name=other,file.driver=file,file.filename=/img/other.raw');
  });

  it('replaces a dotted-key top node with an inline file node', () => {
    const options = childOptions(['-blockdev', 'driver=qcow2,node-name=top,file.driver=file,file.filename=/img/top.qcow2,cache.direct=on'], [top], child);
    expect(options).toHaveLength(1);
    expect(JSON.parse(options[0]!.value!)).toEqual({ driver: 'qcow2', 'node-name': 'top', cache: { direct: 'on' }, file: { driver: 'file', filename: '/state/vda.qcow2' } });
  });
});

describe('buildChildArgv: a libvirt 9.0 command line (captured from a real domain)', async () => {
  const { readFile } = await import('node:fs/promises');
  const argv = JSON.parse(await readFile(new URL('../../fixtures/libvirt/qemu-argv.json', import.meta.url), 'utf8')) as string[];
  const args = argv.slice(1);
  const disks = [
    disk({ id: 'virtio-disk0', file: '/var/tmp/lv1/disk0.qcow2', nodeName: 'libvirt-2-format', declaredBy: 'blockdev', format: 'qcow2', backingFiles: ['/var/cache/forksnap/test-guest/67f2bc18d049f078/data.raw'] }),
    disk({ id: 'virtio-disk1', file: '/var/tmp/lv1/disk1.raw', nodeName: 'libvirt-1-format', declaredBy: 'blockdev', format: 'raw' }),
  ];
  const options = childOptions(args, disks, { 'virtio-disk0': { path: '/w/c0.qcow2', format: 'qcow2' }, 'virtio-disk1': { path: '/w/c1.qcow2', format: 'qcow2' } });
  const text = options.map((option) => `-${option.name} ${option.value ?? ''}`).join('\n');

  it('passes no inherited descriptor: no -add-fd, no fd=N, no /dev/fdset', () => {
    expect(values(options, 'add-fd')).toEqual([]);
    expect(text).not.toMatch(/fd=\d|\/dev\/fdset/);
  });

  it('drops the monitor, keeps the sandbox, the secret object, -msg and -overcommit', () => {
    expect(values(options, 'mon')).toEqual([]);
    expect(values(options, 'sandbox')).toEqual(['on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny']);
    expect(text).toMatch(/"id":"masterKey0"/);
    expect(values(options, 'msg')).toEqual(['timestamp=on']);
    expect(values(options, 'overcommit')).toEqual(['mem-lock=off']);
    expect(values(options, 'no-shutdown')).toEqual([]);
  });

  it('re-declares the JSON -blockdev top nodes on the child images and drops their chains', () => {
    const blockdevs = values(options, 'blockdev').map((value) => JSON.parse(value!) as Record<string, unknown>);
    expect(blockdevs).toEqual([
      { driver: 'qcow2', 'node-name': 'libvirt-2-format', file: { driver: 'file', filename: '/w/c0.qcow2' } },
      { driver: 'qcow2', 'node-name': 'libvirt-1-format', file: { driver: 'file', filename: '/w/c1.qcow2' } },
    ]);
    expect(text).not.toMatch(/disk0\.qcow2|disk1\.raw|data\.raw/);
  });

  it('cuts the socket netdev and both serial chardevs (tcp and inherited fd) off', () => {
    expect(values(options, 'netdev')).toEqual(['hubport,id=hostnet0,hubid=1000']);
    expect(values(options, 'chardev')).toEqual(['null,id=charserial0', 'null,id=charserial1']);
  });

  it('refuses a descriptor it cannot replace (a disk opened through an fd set)', () => {
    expect(() => childOptions(['-blockdev', '{"driver":"file","filename":"/dev/fdset/3","node-name":"x"}'])).toThrow(/file descriptor passed to the parent/);
  });
});
