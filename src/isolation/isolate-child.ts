import { z } from 'zod';
import { ForksnapError } from '../errors.js';
import type { QmpClient } from '../qmp/client.js';
import { CHILD_QMP_CHARDEV } from './child-command-line.js';

/**
 * The last line of isolation, after the state is loaded and before the child runs: every NIC's link
 * goes down (the migrated device state says "link up"; the guest sees the cable unplugged), and
 * every character device is checked to lead nowhere. The netdevs are already unconnected hub ports
 * and the chardevs null backends (child-command-line.ts): the guest could bring a link up again,
 * but there is nothing behind it.
 */
const chardevList = z.array(z.object({ label: z.string(), filename: z.string() }));

/**
 * Chardev backends that reach nothing outside the child. "vc" is a text console with no display.
 * "mux" is the front of a mux=on chardev: it leads only to its "<id>-base" backend, which QEMU
 * lists as a chardev of its own and is checked like any other.
 */
const UNCONNECTED = /^(null|mux|vc(:.*)?|)$/;

export async function isolateChild(child: QmpClient, signal: AbortSignal): Promise<{ nics: string[] }> {
  const network = await child.hmp('info network', signal);
  const nics = [...network.matchAll(/([^\s:\\]+): index=\d+,type=nic/g)].map((match) => match[1]!);
  for (const nic of nics) {
    await child.execute('set_link', { name: nic, up: false }, { signal });
  }
  const chardevs = await child.execute('query-chardev', undefined, { signal, schema: chardevList });
  const connected = chardevs.filter((chardev) => chardev.label !== CHILD_QMP_CHARDEV && !UNCONNECTED.test(chardev.filename));
  if (connected.length > 0) {
    throw new ForksnapError('ISOLATION_FAILED', `the child still has connected character devices: ${connected.map((c) => `${c.label}=${c.filename}`).join(', ')}`, { chardevs: connected });
  }
  // Allowed: NICs, hub ports, and user networking with restrict=on (isolated from the host).
  const backends = [...network.matchAll(/([^\s:\\]+): index=\d+,type=(?!nic\b|hubport\b)([a-z-]+)([^\n]*)/g)]
    .filter((match) => !(match[2] === 'user' && /restrict=on/.test(match[3] ?? '')))
    .map((match) => `${match[1]} (${match[2]})`);
  if (backends.length > 0) {
    throw new ForksnapError('ISOLATION_FAILED', `the child still has network backends: ${backends.join(', ')}`, { backends });
  }
  return { nics };
}
