import { ForksnapError } from '../errors.js';
import { supportedStrategies } from '../forker/choose-strategy.js';
import { STRATEGY_NAMES, type StrategyName } from '../forker/strategy.js';
import { QmpClient } from '../qmp/client.js';
import type { DiskBackendName } from '../snapshot/disk-backend.js';
import { revertToSnapshot } from '../snapshot/revert.js';
import { deleteSnapshot, listSnapshots, loadSnapshot, type SnapshotMeta } from '../snapshot/store.js';
import { validateName } from '../validate-name.js';
import { loadVm } from '../vm/registry.js';
import { refuseExtra, requireArg, type CliContext } from './context.js';
import { createSnapshot } from './create-snapshot.js';
import { viaDaemon } from './daemon-client.js';
import { eventRenderer, printJson, printTable } from './output.js';

const BACKENDS = ['auto', 'reflink', 'qcow2-overlay'] as const;

function parseChoice<T extends string>(value: unknown, allowed: readonly T[], flag: string): T {
  if (value === undefined) return allowed[0]!;
  if (!allowed.includes(value as T)) throw new ForksnapError('INVALID_INPUT', `${flag} must be one of ${allowed.join(', ')}, not "${String(value)}"`, { flag, value });
  return value as T;
}

function parseLabels(raw: unknown): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const item of (raw as string[] | undefined) ?? []) {
    const match = /^([A-Za-z0-9_.-]{1,64})=(.{0,256})$/.exec(item);
    if (!match) throw new ForksnapError('INVALID_INPUT', `--label must be KEY=VALUE (key: letters, digits, "_", ".", "-"), not "${item}"`, { label: item });
    labels[match[1]!] = match[2]!;
  }
  return labels;
}

export async function snapshotCommands(context: CliContext, command: string | undefined, rest: string[]): Promise<number> {
  const { paths, log, json, values } = context;
  switch (command) {
    case 'create': {
      const usage = 'forksnap snapshot create VM [--name ID] [--strategy S] [--disk-backend B] [--shutdown-timeout SEC] [--keep-crash-image] [--label K=V]';
      const [vm, ...extra] = rest;
      refuseExtra(extra, usage);
      validateName('VM', requireArg(vm, 'VM', usage));
      const strategy = parseChoice(values.strategy ?? 'auto', ['auto', ...STRATEGY_NAMES] as const, '--strategy') as StrategyName | 'auto';
      const diskBackend = parseChoice(values['disk-backend'] ?? 'auto', BACKENDS, '--disk-backend') as DiskBackendName | 'auto';
      const timeoutText = values['shutdown-timeout'] as string | undefined;
      if (timeoutText !== undefined && !/^\d+(\.\d+)?$/.test(timeoutText)) throw new ForksnapError('INVALID_INPUT', `--shutdown-timeout must be a number of seconds, not "${timeoutText}"`, {});
      const bandwidthText = values['max-bandwidth'] as string | undefined;
      if (bandwidthText !== undefined && !/^\d+(\.\d+)?$/.test(bandwidthText)) throw new ForksnapError('INVALID_INPUT', `--max-bandwidth must be a number of MiB/s, not "${bandwidthText}"`, {});
      const name = values.name as string | undefined;
      if (name !== undefined) validateName('snapshot', name);
      const renderer = eventRenderer(json || !process.stderr.isTTY ? 'json-lines' : 'tty');
      try {
        // Through the daemon if one answers, else in-process: the same events and result either way.
        const meta = await createSnapshot(context, {
          vm: vm!,
          snapshotId: name,
          strategy,
          diskBackend,
          keepCrashImage: values['keep-crash-image'] === true,
          labels: parseLabels(values.label),
          maxBandwidth: bandwidthText ? Math.round(Number(bandwidthText) * 1048576) : undefined,
          shutdownTimeoutSeconds: timeoutText ? Number(timeoutText) : undefined,
        }, renderer.onEvent);
        renderer.stop();
        if (json || !process.stderr.isTTY) process.stdout.write(`${JSON.stringify({ type: 'result', snapshot: meta })}\n`);
        else process.stdout.write(`snapshot ${meta.id}: ${meta.consistency}, parent downtime ${meta.parentDowntimeMs} ms, strategy ${meta.strategy}, image ready ${(meta.timeToImageMs / 1000).toFixed(1)} s after the halt\n`);
        return 0;
      } finally {
        renderer.stop();
      }
    }
    case 'list': {
      const [vm, ...extra] = rest;
      refuseExtra(extra, 'forksnap snapshot list [VM]');
      if (vm) validateName('VM', vm);
      const metas = await viaDaemon(context, (daemon) => daemon.request<SnapshotMeta[]>('GET', `/v1/snapshots${vm ? `?vm=${encodeURIComponent(vm)}` : ''}`), () => listSnapshots(paths, vm));
      if (json) printJson(metas);
      else printTable(metas.map((m) => ({ id: m.id, vm: m.vm, created: m.createdAt, consistency: m.consistency, strategy: m.strategy, 'downtime ms': m.parentDowntimeMs, disks: m.disks.length })), ['id', 'vm', 'created', 'consistency', 'strategy', 'downtime ms', 'disks']);
      return 0;
    }
    case 'show': {
      const usage = 'forksnap snapshot show ID';
      const [id, ...extra] = rest;
      refuseExtra(extra, usage);
      requireArg(id, 'ID', usage);
      const meta = await viaDaemon(context, (daemon) => daemon.request<SnapshotMeta & { dir: string }>('GET', `/v1/snapshots/${encodeURIComponent(id!)}`), () => loadSnapshot(paths, id!));
      if (json) printJson(meta);
      else {
        process.stdout.write(`${meta.id}\n  vm:           ${meta.vm}\n  created:      ${meta.createdAt}\n  consistency:  ${meta.consistency} (${meta.consistencyReason})\n  strategy:     ${meta.strategy}\n  downtime:     ${meta.parentDowntimeMs} ms\n  state ready:  ${meta.timeToStateMs} ms after the halt\n  image ready:  ${meta.timeToImageMs} ms after the halt\n  phases (ms):  ${Object.entries(meta.phasesMs).map(([k, v]) => `${k}=${Math.round(v)}`).join(' ')}\n`);
        for (const disk of meta.disks) process.stdout.write(`  disk ${disk.id}: ${meta.dir}/${disk.image.file} (${disk.image.format}, ${disk.image.sizeBytes} bytes, sha256 ${disk.image.sha256}) from ${disk.source} via ${disk.backend}\n`);
      }
      return 0;
    }
    case 'delete': {
      const usage = 'forksnap snapshot delete ID';
      const [id, ...extra] = rest;
      refuseExtra(extra, usage);
      requireArg(id, 'ID', usage);
      await viaDaemon(context, (daemon) => daemon.request('DELETE', `/v1/snapshots/${encodeURIComponent(id!)}`), () => deleteSnapshot(paths, id!));
      if (json) printJson({ id, deleted: true });
      else process.stdout.write(`snapshot ${id} deleted\n`);
      return 0;
    }
    case 'revert': {
      const usage = 'forksnap snapshot revert ID [--vm NAME] [--restart]';
      const [id, ...extra] = rest;
      refuseExtra(extra, usage);
      requireArg(id, 'ID', usage);
      const result = await viaDaemon(context, (daemon) => daemon.request<Awaited<ReturnType<typeof revertToSnapshot>>>('POST', `/v1/snapshots/${encodeURIComponent(id!)}/revert`, { vm: values.vm, restart: values.restart === true }), () => revertToSnapshot(paths, id!, { vm: values.vm as string | undefined, restart: values.restart === true, log }));
      if (json) printJson({ id, ...result });
      else process.stdout.write(`VM ${result.vm} reverted to ${id} (${result.disks.join(', ')})${result.restarted ? ' and restarted' : ''}\n`);
      return 0;
    }
    case 'strategies': {
      const usage = 'forksnap strategies VM';
      const [vm, ...extra] = rest;
      refuseExtra(extra, usage);
      const record = await loadVm(paths, requireArg(vm, 'VM', usage));
      const qmp = await QmpClient.connect(record.qmpSocket, { log, signal: context.signal });
      try {
        const result = await supportedStrategies(qmp, context.signal);
        if (json) printJson(result);
        else printTable(STRATEGY_NAMES.map((name) => ({ strategy: name, supported: result.supported.includes(name) ? 'yes' : 'no', why: result.reasons[name] ?? '' })), ['strategy', 'supported', 'why']);
      } finally {
        qmp.close();
      }
      return 0;
    }
    default:
      throw new ForksnapError('INVALID_INPUT', `unknown snapshot command "${command ?? ''}"; one of create, list, show, delete, revert`, { command });
  }
}
