import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ForksnapError } from '../../../src/errors.js';
import { verifyChildMatchesParent } from '../../../src/isolation/verify-child.js';
import { QmpClient } from '../../../src/qmp/client.js';
import type { PciDevice } from '../../../src/qmp/schemas.js';
import { FakeQmpServer } from '../../helpers/fake-qmp-server.js';

const log = pino({ level: 'silent' });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface VmView {
  pci: PciDevice[];
  blocks: unknown[];
  cpus: unknown[];
  memory: unknown[];
  peripheral: { name: string; type: string }[];
  anonymous: { name: string; type: string }[];
}

const pci = (slot: number, vendor: number, device: number, qdevId = '', bridged?: PciDevice[]): PciDevice => ({
  bus: 0,
  slot,
  function: 0,
  class_info: { class: 0x200 },
  id: { vendor, device },
  qdev_id: qdevId,
  ...(bridged ? { pci_bridge: { devices: bridged } } : {}),
});

function baseView(): VmView {
  return {
    pci: [
      pci(0, 0x8086, 0x29c0),
      pci(2, 0x1af4, 0x1000, 'nic0'),
      pci(3, 0x1af4, 0x1001, 'vda-dev'),
      pci(30, 0x1b36, 0x000c, 'bridge0', [{ ...pci(1, 0x1af4, 0x1005, 'rng0'), bus: 1 }]),
    ],
    blocks: [
      { device: 'd0', qdev: '/machine/peripheral/vda-dev/virtio-backend', removable: false },
      { device: 'ide2-cd0', removable: true },
    ],
    cpus: [{ 'cpu-index': 0, 'qom-path': '/machine/unattached/device[0]' }, { 'cpu-index': 1, 'qom-path': '/machine/unattached/device[1]' }],
    memory: [],
    peripheral: [{ name: 'type', type: 'string' }, { name: 'nic0', type: 'child<virtio-net-pci>' }, { name: 'vda-dev', type: 'child<virtio-blk-pci>' }],
    anonymous: [{ name: 'type', type: 'string' }, { name: 'device[0]', type: 'child<virtio-balloon-pci>' }],
  };
}

async function serve(view: VmView): Promise<{ server: FakeQmpServer; client: QmpClient }> {
  const server = await FakeQmpServer.start({
    handlers: {
      'query-pci': { return: [{ bus: 0, devices: view.pci }] },
      'query-block': { return: view.blocks },
      'query-cpus-fast': { return: view.cpus },
      'query-memory-devices': { return: view.memory },
      'qom-list': (args) => ({ return: args?.path === '/machine/peripheral' ? view.peripheral : view.anonymous }),
    },
  });
  cleanups.push(() => server.close());
  const client = await QmpClient.connect(server.path, { log, timeoutMs: 2000 });
  cleanups.push(() => client.close());
  return { server, client };
}

async function mismatch(parentView: VmView, childView: VmView): Promise<ForksnapError> {
  const [parent, child] = await Promise.all([serve(parentView), serve(childView)]);
  const error = await verifyChildMatchesParent(parent.client, child.client, AbortSignal.timeout(2000)).then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(ForksnapError);
  expect((error as ForksnapError).code).toBe('VM_CONFIG_MISMATCH');
  return error as ForksnapError;
}

describe('verifyChildMatchesParent', () => {
  it('passes when both QEMUs report the same hardware, and asks both about every aspect', async () => {
    const [parent, child] = await Promise.all([serve(baseView()), serve(baseView())]);
    await expect(verifyChildMatchesParent(parent.client, child.client, AbortSignal.timeout(2000))).resolves.toBeUndefined();
    for (const server of [parent.server, child.server]) {
      expect(server.received.map((command) => command.execute).sort()).toEqual(
        ['qmp_capabilities', 'qom-list', 'qom-list', 'query-block', 'query-cpus-fast', 'query-memory-devices', 'query-pci'],
      );
      expect(server.commandsNamed('qom-list').map((command) => command.arguments?.path).sort()).toEqual(['/machine/peripheral', '/machine/peripheral-anon']);
    }
  });

  it('ignores order and the numbering of anonymous devices', async () => {
    const child = baseView();
    child.pci.reverse();
    child.anonymous = [{ name: 'device[7]', type: 'child<virtio-balloon-pci>' }];
    const [p, c] = await Promise.all([serve(baseView()), serve(child)]);
    await expect(verifyChildMatchesParent(p.client, c.client, AbortSignal.timeout(2000))).resolves.toBeUndefined();
  });

  it('names a PCI device the running VM has and its command line lacks (hot-plugged)', async () => {
    const parent = baseView();
    parent.pci.push(pci(5, 0x8086, 0x100e, 'hotnic'));
    const error = await mismatch(parent, baseView());
    expect(error.message).toContain('PCI devices differ');
    expect(error.message).toContain('the running VM has PCI 0:5.0 8086:100e id=hotnic');
    expect(error.context).toEqual({ aspect: 'PCI devices', missing: ['PCI 0:5.0 8086:100e id=hotnic'], extra: [] });
  });

  it('leaves devices behind a PCI bridge to the QOM comparison (a fresh child reports none behind bridges)', async () => {
    const child = baseView();
    child.pci[3] = pci(30, 0x1b36, 0x000c, 'bridge0', []);
    const [parent, fresh] = await Promise.all([serve(baseView()), serve(child)]);
    await expect(verifyChildMatchesParent(parent.client, fresh.client, AbortSignal.timeout(2000))).resolves.toBeUndefined();
    const hotplugged = baseView();
    hotplugged.peripheral = [...hotplugged.peripheral, { name: 'rng9', type: 'child<virtio-rng-pci>' }];
    const error = await mismatch(hotplugged, child);
    expect(error.context).toMatchObject({ aspect: 'user-created devices', missing: ['rng9 (virtio-rng-pci)'] });
  });

  it('names a block device the command line gives but the running VM no longer has', async () => {
    const parent = baseView();
    parent.blocks = parent.blocks.slice(0, 1);
    const error = await mismatch(parent, baseView());
    expect(error.message).toContain('block devices differ');
    expect(error.message).toContain('the command line gives block ide2-cd0 (removable) which the running VM no longer has');
  });

  it('compares CPUs, memory devices and user-created devices', async () => {
    const moreCpus = baseView();
    moreCpus.cpus.push({ 'cpu-index': 2, 'qom-path': '/machine/peripheral/cpu2' });
    expect((await mismatch(moreCpus, baseView())).context).toMatchObject({ aspect: 'CPUs', missing: ['cpu /machine/peripheral/cpu2'] });

    const dimm = baseView();
    dimm.memory = [{ type: 'dimm', data: { id: 'dimm1', size: 1 << 30 } }];
    expect((await mismatch(dimm, baseView())).context).toMatchObject({ aspect: 'memory devices', missing: ['memory dimm dimm1'] });

    const hotplugged = baseView();
    hotplugged.peripheral.push({ name: 'serial1', type: 'child<isa-serial>' });
    expect((await mismatch(hotplugged, baseView())).context).toMatchObject({ aspect: 'user-created devices', missing: ['serial1 (isa-serial)'] });
  });

  it('fails with QMP_PROTOCOL when a reply does not have the expected shape', async () => {
    const broken = baseView();
    broken.cpus = [{ 'cpu-index': 'zero' }];
    const [p, c] = await Promise.all([serve(baseView()), serve(broken)]);
    await expect(verifyChildMatchesParent(p.client, c.client, AbortSignal.timeout(2000))).rejects.toMatchObject({ code: 'QMP_PROTOCOL' });
  });
});
