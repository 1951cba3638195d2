import path from 'node:path';
import { ForksnapError } from '../errors.js';
import { isAlive } from '../qemu/process-info.js';
import { attachVm, DEFAULT_LIBVIRT_URI } from '../vm/attach-vm.js';
import { parseQemuBase } from '../qemu/binary.js';
import { listVms, loadVm, removeVm, type VmRecord } from '../vm/registry.js';
import { loadVmSpec } from '../vm/spec.js';
import { startVm } from '../vm/start-vm.js';
import { stopVm } from '../vm/stop-vm.js';
import { refuseExtra, requireArg, type CliContext } from './context.js';
import { viaDaemon } from './daemon-client.js';
import { printJson, printTable } from './output.js';

export async function vmCommands(context: CliContext, command: string | undefined, rest: string[]): Promise<number> {
  const { paths, log, json, values } = context;
  switch (command) {
    case 'start': {
      const usage = 'forksnap vm start SPEC.json [--qemu-base 7.2|10.0]';
      const [file, ...extra] = rest;
      refuseExtra(extra, usage);
      const qemuBase = values['qemu-base'] !== undefined ? parseQemuBase(String(values['qemu-base']), '--qemu-base') : undefined;
      const spec = await loadVmSpec(requireArg(file, 'SPEC', usage));
      const record = await startVm(paths, spec, { log, signal: context.signal, ...(qemuBase ? { qemuBase } : {}) });
      if (json) printJson(record);
      else process.stdout.write(`VM ${record.name} started (pid ${record.pid}, QMP ${record.qmpSocket})\n`);
      return 0;
    }
    case 'attach': {
      const usage = 'forksnap vm attach NAME (--qmp SOCKET | --libvirt DOMAIN [--connect URI]) [--pid PID]';
      const [name, ...extra] = rest;
      refuseExtra(extra, usage);
      const qmp = values.qmp as string | undefined;
      const domain = values.libvirt as string | undefined;
      const uri = values.connect as string | undefined;
      if (!qmp === !domain) throw new ForksnapError('INVALID_INPUT', `give exactly one of --qmp SOCKET or --libvirt DOMAIN; usage: ${usage}`, {});
      if (uri && !domain) throw new ForksnapError('INVALID_INPUT', `--connect URI goes with --libvirt DOMAIN; usage: ${usage}`, {});
      const pidText = values.pid as string | undefined;
      if (pidText !== undefined && !/^\d+$/.test(pidText)) throw new ForksnapError('INVALID_INPUT', `--pid must be a process id, not "${pidText}"`, { pid: pidText });
      requireArg(name, 'NAME', usage);
      const libvirt = domain ? { domain, uri: uri ?? DEFAULT_LIBVIRT_URI } : undefined;
      const body = { name, ...(qmp ? { qmpSocket: path.resolve(qmp) } : {}), ...(libvirt ? { libvirt } : {}), ...(pidText ? { pid: Number(pidText) } : {}) };
      const record = await viaDaemon(context, (daemon) => daemon.request<VmRecord>('POST', '/v1/vms', body), () => attachVm(paths, name!, { qmpSocket: qmp, libvirt, pid: pidText ? Number(pidText) : undefined, log, signal: context.signal }));
      if (json) printJson(record);
      else process.stdout.write(`VM ${record.name} attached (pid ${record.pid}${record.libvirt ? `, libvirt domain ${record.libvirt.domain}` : ''}, ${record.disks.length} writable disk(s): ${record.disks.map((d) => d.path).join(', ')})\n`);
      return 0;
    }
    case 'list': {
      refuseExtra(rest, 'forksnap vm list');
      const rows = await viaDaemon(context, (daemon) => daemon.request<(VmRecord & { running: boolean })[]>('GET', '/v1/vms'), async () => Promise.all((await listVms(paths)).map(async (vm) => ({ ...vm, running: vm.pid !== undefined && (await isAlive(vm.pid)) }))));
      if (json) printJson(rows);
      else printTable(rows.map((vm) => ({ name: vm.name, origin: vm.origin, pid: vm.pid, state: vm.running ? 'running' : 'stopped', disks: vm.disks.length, qmp: vm.qmpSocket })), ['name', 'origin', 'pid', 'state', 'disks', 'qmp']);
      return 0;
    }
    case 'stop': {
      const usage = 'forksnap vm stop NAME [--powerdown]';
      const [name, ...extra] = rest;
      refuseExtra(extra, usage);
      const result = await stopVm(paths, requireArg(name, 'NAME', usage), { powerdown: values.powerdown === true, log });
      if (json) printJson({ vm: name, stopped: true, how: result.how });
      else process.stdout.write(`VM ${name} stopped (${result.how})\n`);
      return 0;
    }
    case 'remove': {
      const usage = 'forksnap vm remove NAME';
      const [name, ...extra] = rest;
      refuseExtra(extra, usage);
      const record = await loadVm(paths, requireArg(name, 'NAME', usage));
      if (record.pid && (await isAlive(record.pid))) throw new ForksnapError('VM_RUNNING', `VM "${record.name}" is running; stop it first`, { vm: record.name });
      await removeVm(paths, record.name);
      if (json) printJson({ vm: record.name, removed: true });
      else process.stdout.write(`VM ${record.name} removed (its disks are untouched)\n`);
      return 0;
    }
    default:
      throw new ForksnapError('INVALID_INPUT', `unknown vm command "${command ?? ''}"; one of start, attach, list, stop, remove`, { command });
  }
}
