import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ForksnapError } from '../../../src/errors.js';
import { CHILD_QMP_CHARDEV } from '../../../src/isolation/child-command-line.js';
import { isolateChild } from '../../../src/isolation/isolate-child.js';
import { QmpClient } from '../../../src/qmp/client.js';
import { FakeQmpServer } from '../../helpers/fake-qmp-server.js';

const log = pino({ level: 'silent' });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const OWN_QMP = { label: CHILD_QMP_CHARDEV, filename: 'unix:/state/work/job1/child-qmp.sock,server=on' };

const USER_RESTRICTED =
  'net0: index=0,type=user,net=10.0.2.0,restrict=on\r\n \\ virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n';

/** What QEMU 7.2 prints for a NIC on an unconnected hub port and a NIC on restricted user networking. */
const HUB_AND_USER = [
  'hub 1000',
  ' \\ n0: nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56',
  'e1000.0: index=0,type=nic,model=e1000,macaddr=52:54:00:12:34:57',
  ' \\ n1: index=0,type=user,net=10.0.2.0,restrict=on',
  '',
].join('\r\n');

async function child(network: string, chardevs: { label: string; filename: string }[]): Promise<{ server: FakeQmpServer; client: QmpClient }> {
  const server = await FakeQmpServer.start({
    handlers: {
      'human-monitor-command': (args) => (args?.['command-line'] === 'info network' ? { return: network } : { error: { class: 'GenericError', desc: 'unexpected HMP command' } }),
      set_link: { return: {} },
      'query-chardev': { return: chardevs.map((chardev) => ({ ...chardev, 'frontend-open': false })) },
    },
  });
  cleanups.push(() => server.close());
  const client = await QmpClient.connect(server.path, { log, timeoutMs: 2000 });
  cleanups.push(() => client.close());
  return { server, client };
}

async function isolationFailure(client: QmpClient): Promise<ForksnapError> {
  const error = await isolateChild(client, AbortSignal.timeout(2000)).then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(ForksnapError);
  expect((error as ForksnapError).code).toBe('ISOLATION_FAILED');
  return error as ForksnapError;
}

describe('isolateChild', () => {
  it('sets the link of every NIC down and accepts restricted user networking and null chardevs', async () => {
    const { server, client } = await child(USER_RESTRICTED, [OWN_QMP, { label: 'serial0', filename: 'null' }, { label: 'vc0', filename: 'vc' }]);
    await expect(isolateChild(client, AbortSignal.timeout(2000))).resolves.toEqual({ nics: ['virtio-net-pci.0'] });
    expect(server.commandsNamed('set_link').map((command) => command.arguments)).toEqual([{ name: 'virtio-net-pci.0', up: false }]);
    expect(server.commandsNamed('human-monitor-command').map((command) => command.arguments)).toEqual([{ 'command-line': 'info network' }]);
  });

  it('finds NICs behind hub ports in real QEMU output', async () => {
    const { server, client } = await child(HUB_AND_USER, [OWN_QMP]);
    await expect(isolateChild(client, AbortSignal.timeout(2000))).resolves.toEqual({ nics: ['nic0', 'e1000.0'] });
    expect(server.commandsNamed('set_link').map((command) => command.arguments)).toEqual([
      { name: 'nic0', up: false },
      { name: 'e1000.0', up: false },
    ]);
  });

  it('refuses a chardev that still leads somewhere, naming it', async () => {
    const { client } = await child(USER_RESTRICTED, [OWN_QMP, { label: 'serial0', filename: 'null' }, { label: 'ser1', filename: 'socket:/x' }]);
    const error = await isolationFailure(client);
    expect(error.message).toContain('ser1=socket:/x');
    expect(error.message).not.toContain('serial0');
    expect(error.context).toEqual({ chardevs: [{ label: 'ser1', filename: 'socket:/x' }] });
  });

  it('does not mistake forksnap\'s own QMP socket for a leak', async () => {
    const { client } = await child('', [OWN_QMP]);
    await expect(isolateChild(client, AbortSignal.timeout(2000))).resolves.toEqual({ nics: [] });
  });

  // child-command-line.ts keeps mux=on for a multiplexed chardev (its base becomes null). QEMU
  // reports the mux front as filename "mux" and its base as "<id>-base" with filename "null".
  it('accepts a multiplexed chardev whose base is null', async () => {
    const { client } = await child(USER_RESTRICTED, [OWN_QMP, { label: 'char0-base', filename: 'null' }, { label: 'char0', filename: 'mux' }]);
    await expect(isolateChild(client, AbortSignal.timeout(2000))).resolves.toEqual({ nics: ['virtio-net-pci.0'] });
  });

  it('refuses user networking without restrict=on', async () => {
    const { client } = await child(USER_RESTRICTED.replace('restrict=on', 'restrict=off'), [OWN_QMP]);
    const error = await isolationFailure(client);
    expect(error.message).toContain('network backends: net0 (user)');
    expect(error.context).toEqual({ backends: ['net0 (user)'] });
  });

  it('refuses a tap backend that is still there', async () => {
    const network = 'hostnet0: index=0,type=tap,ifname=tap0,script=no,downscript=no\r\n \\ net0: index=0,type=nic,model=e1000,macaddr=52:54:00:00:00:01\r\n';
    const { server, client } = await child(network, [OWN_QMP]);
    const error = await isolationFailure(client);
    expect(error.context).toEqual({ backends: ['hostnet0 (tap)'] });
    // The links are down before the refusal, so the guest cannot use the NIC meanwhile.
    expect(server.commandsNamed('set_link').map((command) => command.arguments)).toEqual([{ name: 'net0', up: false }]);
  });

  it('fails with the QMP error when set_link is refused', async () => {
    const { server, client } = await child(USER_RESTRICTED, [OWN_QMP]);
    server.handle('set_link', { error: { class: 'DeviceNotFound', desc: "Device 'virtio-net-pci.0' not found" } });
    await expect(isolateChild(client, AbortSignal.timeout(2000))).rejects.toMatchObject({ code: 'QMP_COMMAND_FAILED', errorClass: 'DeviceNotFound' });
  });
});
