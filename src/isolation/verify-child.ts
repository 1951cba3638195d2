import { z } from 'zod';
import { ForksnapError } from '../errors.js';
import type { QmpClient } from '../qmp/client.js';
import { blockInfoList, cpuInfoFastList, memoryDeviceList, pciInfoList, qomListEntries } from '../qmp/schemas.js';

/**
 * The child is started from the parent's command line. Devices hot-plugged into the parent at
 * runtime are not on it, and implicit placement could differ: compare what both QEMUs report
 * before any state is sent, and refuse naming the first difference.
 */
export async function verifyChildMatchesParent(parent: QmpClient, child: QmpClient, signal: AbortSignal): Promise<void> {
  const [p, c] = await Promise.all([describe(parent, signal), describe(child, signal)]);
  for (const key of Object.keys(p) as (keyof Description)[]) {
    const parentItems = p[key];
    const childItems = new Set(c[key]);
    const missing = parentItems.filter((item) => !childItems.has(item));
    const extra = c[key].filter((item) => !new Set(parentItems).has(item));
    if (missing.length > 0 || extra.length > 0) {
      const detail = [missing.length ? `the running VM has ${missing.join('; ')} which its command line lacks (added at runtime?)` : '', extra.length ? `the command line gives ${extra.join('; ')} which the running VM no longer has (removed at runtime?)` : '']
        .filter(Boolean)
        .join(', and ');
      throw new ForksnapError('VM_CONFIG_MISMATCH', `cannot clone this VM: ${key} differ: ${detail}`, { aspect: key, missing, extra });
    }
  }
}

interface Description {
  'PCI devices': string[];
  'block devices': string[];
  'CPUs': string[];
  'memory devices': string[];
  'user-created devices': string[];
}

async function describe(qmp: QmpClient, signal: AbortSignal): Promise<Description> {
  const [pci, blocks, cpus, memory, peripherals, anonymous] = await Promise.all([
    qmp.execute('query-pci', undefined, { signal, schema: pciInfoList }),
    qmp.execute('query-block', undefined, { signal, schema: blockInfoList }),
    qmp.execute('query-cpus-fast', undefined, { signal, schema: cpuInfoFastList }),
    qmp.execute('query-memory-devices', undefined, { signal, schema: memoryDeviceList }),
    qmp.execute('qom-list', { path: '/machine/peripheral' }, { signal, schema: qomListEntries }),
    qmp.execute('qom-list', { path: '/machine/peripheral-anon' }, { signal, schema: qomListEntries }),
  ]);
  // Only the root buses' devices are compared by PCI address: QEMU's query-pci finds the devices
  // behind a bridge or root port by its secondary bus number, which the guest's firmware assigns,
  // so a fresh child (-S, nothing run yet) reports none of them (libvirt puts every device behind
  // a pcie-root-port). Devices behind bridges are still compared, by QOM below: every
  // user-created device with its id and type.
  const pciDevices: string[] = [];
  for (const bus of pci) {
    for (const device of bus.devices) {
      pciDevices.push(`PCI ${bus.bus}:${device.slot}.${device.function} ${hex(device.id.vendor)}:${hex(device.id.device)}${device.qdev_id ? ` id=${device.qdev_id}` : ''}`);
    }
  }
  const children = (entries: z.infer<typeof qomListEntries>) => entries.filter((entry) => entry.type.startsWith('child<')).map((entry) => `${entry.name} (${entry.type.slice(6, -1)})`);
  return {
    'PCI devices': pciDevices.sort(),
    'block devices': blocks.map((block) => `block ${block.device || block.qdev || '?'}${block.removable ? ' (removable)' : ''}`).sort(),
    'CPUs': cpus.map((cpu) => `cpu ${cpu['qom-path']}`).sort(),
    'memory devices': memory.map((device) => `memory ${device.type} ${String(device.data.id ?? '')}`).sort(),
    'user-created devices': [...children(peripherals), ...children(anonymous).map((name) => `anonymous ${name.replace(/\[\d+\]/, '')}`)].sort(),
  };
}

function hex(value: number): string {
  return value.toString(16).padStart(4, '0');
}
