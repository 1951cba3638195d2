import { describe, expect, it } from 'vitest';
import {
  formatArgv, formatOpts, getOpt, impliedKeyFor, isJsonValue, isTruthy, optionProperties, parseArgv, parseOpts,
} from '../../../src/qemu/command-line.js';

describe('parseArgv / formatArgv', () => {
  const argv = [
    '/usr/bin/qemu-system-x86_64',
    '-name', 'guest=vm1',
    '-machine', 'q35,accel=kvm',
    '-enable-kvm',
    '-m', '512',
    '-nodefaults',
    '-S',
    '-drive', 'file=/img/a,,b.qcow2,if=virtio,format=qcow2',
    '--snapshot',
    '-blockdev', '{"driver":"file","filename":"/img/x.raw","node-name":"f0"}',
    '-no-reboot',
    '-daemonize',
  ];

  it('splits options into names and values and knows which options are flags', () => {
    const parsed = parseArgv(argv);
    expect(parsed.binary).toBe('/usr/bin/qemu-system-x86_64');
    expect(parsed.options).toEqual([
      { name: 'name', value: 'guest=vm1' },
      { name: 'machine', value: 'q35,accel=kvm' },
      { name: 'enable-kvm' },
      { name: 'm', value: '512' },
      { name: 'nodefaults' },
      { name: 'S' },
      { name: 'drive', value: 'file=/img/a,,b.qcow2,if=virtio,format=qcow2' },
      { name: 'snapshot' },
      { name: 'blockdev', value: '{"driver":"file","filename":"/img/x.raw","node-name":"f0"}' },
      { name: 'no-reboot' },
      { name: 'daemonize' },
    ]);
  });

  it('round-trips through formatArgv (double dashes normalised to one)', () => {
    expect(formatArgv(parseArgv(argv))).toEqual(argv.map((arg) => (arg === '--snapshot' ? '-snapshot' : arg)));
  });

  it('treats a bare argument as the legacy -hda image', () => {
    expect(parseArgv(['qemu', 'disk.img', '-m', '256']).options).toEqual([{ name: 'hda', value: 'disk.img' }, { name: 'm', value: '256' }]);
  });

  it('refuses an empty command line and an option missing its argument', () => {
    expect(() => parseArgv([])).toThrow(/empty/);
    expect(() => parseArgv(['qemu', '-m'])).toThrow(/-m is missing its argument/);
  });

  it('takes a value that starts with a dash as the argument of a non-flag option', () => {
    expect(parseArgv(['qemu', '-append', '-v console=ttyS0']).options).toEqual([{ name: 'append', value: '-v console=ttyS0' }]);
  });
});

describe('parseOpts / formatOpts', () => {
  it('splits key=value pairs and keeps duplicates in order', () => {
    expect(parseOpts('user,id=n0,hostfwd=tcp::22-:22,hostfwd=tcp::80-:80', 'type')).toEqual([
      ['type', 'user'],
      ['id', 'n0'],
      ['hostfwd', 'tcp::22-:22'],
      ['hostfwd', 'tcp::80-:80'],
    ]);
  });

  it('reads ",," as a literal comma inside a value', () => {
    expect(parseOpts('file=/img/a,,b,,c.qcow2,if=none')).toEqual([
      ['file', '/img/a,b,c.qcow2'],
      ['if', 'none'],
    ]);
  });

  it('uses the implied key only for a first element without "="', () => {
    expect(parseOpts('virtio-net-pci,netdev=n0', 'driver')).toEqual([['driver', 'virtio-net-pci'], ['netdev', 'n0']]);
    expect(parseOpts('driver=e1000,netdev=n0', 'driver')).toEqual([['driver', 'e1000'], ['netdev', 'n0']]);
  });

  it('reads a bare element that is not first (or has no implied key) as key=on', () => {
    expect(parseOpts('socket,id=c0,server,nowait', 'backend')).toEqual([
      ['backend', 'socket'],
      ['id', 'c0'],
      ['server', 'on'],
      ['nowait', 'on'],
    ]);
    expect(parseOpts('readonly,file=x')).toEqual([['readonly', 'on'], ['file', 'x']]);
  });

  it('keeps "=" inside values and skips empty elements', () => {
    expect(parseOpts('a=b=c,,d,f=,')).toEqual([['a', 'b=c,d'], ['f', '']]);
  });

  it('formats with commas escaped, so parse(format(x)) is x', () => {
    const entries: [string, string][] = [['file', '/img/a,b.qcow2'], ['format', 'qcow2'], ['cache', 'none']];
    const text = formatOpts(entries);
    expect(text).toBe('file=/img/a,,b.qcow2,format=qcow2,cache=none');
    expect(parseOpts(text)).toEqual(entries);
  });

  it('getOpt returns the last value of a key', () => {
    expect(getOpt([['a', '1'], ['b', '2'], ['a', '3']], 'a')).toBe('3');
    expect(getOpt([['a', '1']], 'missing')).toBeUndefined();
  });

  it('knows the implied keys of the options forksnap reads', () => {
    expect(impliedKeyFor('netdev')).toBe('type');
    expect(impliedKeyFor('device')).toBe('driver');
    expect(impliedKeyFor('object')).toBe('qom-type');
    expect(impliedKeyFor('chardev')).toBe('backend');
    expect(impliedKeyFor('drive')).toBeUndefined();
    expect(impliedKeyFor('blockdev')).toBeUndefined();
  });
});

describe('optionProperties', () => {
  it('reads QemuOpts with the implied key as a flat record of last values', () => {
    expect(optionProperties({ name: 'device', value: 'virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,id=nic0' })).toEqual({
      driver: 'virtio-net-pci',
      netdev: 'n0',
      mac: '52:54:00:00:00:01',
      id: 'nic0',
    });
    expect(optionProperties({ name: 'object', value: 'memory-backend-file,id=m0,share=off,share=on' })).toMatchObject({ 'qom-type': 'memory-backend-file', share: 'on' });
  });

  it('keeps dotted keys of QemuOpts dotted', () => {
    expect(optionProperties({ name: 'blockdev', value: 'driver=qcow2,node-name=top,file.driver=file,file.filename=/a' })).toEqual({
      driver: 'qcow2',
      'node-name': 'top',
      'file.driver': 'file',
      'file.filename': '/a',
    });
  });

  it('parses JSON option values as they are', () => {
    expect(optionProperties({ name: 'device', value: ' {"driver":"virtio-blk-pci","drive":"d0","id":"blk0"}' })).toEqual({ driver: 'virtio-blk-pci', drive: 'd0', id: 'blk0' });
    expect(optionProperties({ name: 'object', value: '{"qom-type":"memory-backend-ram","id":"m","size":1073741824}' })).toEqual({ 'qom-type': 'memory-backend-ram', id: 'm', size: 1073741824 });
  });

  it('returns an empty record for flags and for broken JSON', () => {
    expect(optionProperties({ name: 'S' })).toEqual({});
    expect(optionProperties({ name: 'device', value: '{"driver": ' })).toEqual({});
  });

  it('isJsonValue recognises JSON by its leading brace', () => {
    expect(isJsonValue('  {"a":1}')).toBe(true);
    expect(isJsonValue('driver=x')).toBe(false);
  });

  it('isTruthy accepts the QEMU boolean spellings', () => {
    for (const value of ['on', 'yes', 'true', 'y', 'ON', true]) expect(isTruthy(value)).toBe(true);
    for (const value of ['off', 'no', 'false', 'n', '', undefined, 1, false]) expect(isTruthy(value)).toBe(false);
  });
});
