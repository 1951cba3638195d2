import { EXIT_CODES, ForksnapError } from '../errors.js';
import { supportedStrategies } from '../forker/choose-strategy.js';
import { STRATEGY_NAMES, type StrategyName } from '../forker/strategy.js';
import { jobRequestSchema, type JobRequest } from '../jobs/job-record.js';
import { revertToSnapshot } from '../snapshot/revert.js';
import { deleteSnapshot, listSnapshots, loadSnapshot, type SnapshotView } from '../snapshot/store.js';
import { verifySnapshot } from '../snapshot/verify.js';
import { exportToFile, serveNbd } from '../snapshot/export.js';
import { validateName } from '../validate-name.js';
import { loadVm } from '../vm/registry.js';
import { endpointOf, openVmQmp } from '../vm/vm-qmp.js';
import { refuseExtra, requireArg, type CliContext } from './context.js';
import { createSnapshot } from './create-snapshot.js';
import { viaDaemon } from './daemon-client.js';
import { eventRenderer, printJson, printTable } from './output.js';

/** What the job request accepts (job-record.ts), so the CLI and the API take the same backends. */
const BACKENDS = jobRequestSchema.shape.diskBackend.unwrap().options;

function parseChoice<T extends string>(value: unknown, allowed: readonly T[], flag: string): T {
  if (value === undefined) return allowed[0]!;
  if (!allowed.includes(value as T)) throw new ForksnapError('INVALID_INPUT', `${flag} must be one of ${allowed.join(', ')}, not "${String(value)}"`, { flag, value });
  return value as T;
}

/** --incremental (the default: README "Incremental storage") / --full. */
function parseStorage(values: Record<string, unknown>): 'full' | 'incremental' {
  if (values.incremental === true && values.full === true) throw new ForksnapError('INVALID_INPUT', 'give --incremental or --full, not both', {});
  return values.full === true ? 'full' : 'incremental';
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
      const usage = 'forksnap snapshot create VM [--name ID] [--strategy S] [--background-push off|on|MIB_PER_S] [--disk-backend B] [--shutdown-timeout SEC] [--keep-crash-image] [--label K=V] [--require-clean] [--verify] [--incremental | --full]';
      const [vm, ...extra] = rest;
      refuseExtra(extra, usage);
      validateName('VM', requireArg(vm, 'VM', usage));
      const strategy = parseChoice(values.strategy ?? 'auto', ['auto', ...STRATEGY_NAMES] as const, '--strategy') as StrategyName | 'auto';
      const diskBackend = parseChoice(values['disk-backend'] ?? 'auto', BACKENDS, '--disk-backend') as JobRequest['diskBackend'];
      const timeoutText = values['shutdown-timeout'] as string | undefined;
      if (timeoutText !== undefined && !/^\d+(\.\d+)?$/.test(timeoutText)) throw new ForksnapError('INVALID_INPUT', `--shutdown-timeout must be a number of seconds, not "${timeoutText}"`, {});
      const bandwidthText = values['max-bandwidth'] as string | undefined;
      if (bandwidthText !== undefined && !/^\d+(\.\d+)?$/.test(bandwidthText)) throw new ForksnapError('INVALID_INPUT', `--max-bandwidth must be a number of MiB/s, not "${bandwidthText}"`, {});
      const pushText = values['background-push'] as string | undefined;
      if (pushText !== undefined && !/^(on|off|\d+(\.\d+)?)$/.test(pushText)) throw new ForksnapError('INVALID_INPUT', `--background-push must be on, off or a rate in MiB/s, not "${pushText}"`, {});
      // With auto it applies when auto picks fork-postcopy; another strategy by name never uses it.
      if (pushText !== undefined && strategy !== 'fork-postcopy' && strategy !== 'auto') throw new ForksnapError('INVALID_INPUT', `--background-push is for --strategy fork-postcopy (or auto) only, not ${strategy}`, { strategy });
      const backgroundPush = pushText === undefined || pushText === 'off' ? 'off' : pushText === 'on' ? 'on' : Math.max(65_536, Math.round(Number(pushText) * 1048576));
      const reserveText = values['space-reserve'] as string | undefined;
      if (reserveText !== undefined && !/^\d+$/.test(reserveText)) throw new ForksnapError('INVALID_INPUT', `--space-reserve must be a whole number of MiB, not "${reserveText}"`, {});
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
          requireClean: values['require-clean'] === true,
          verify: values.verify === true,
          storage: parseStorage(values),
          backgroundPush,
          ...(reserveText !== undefined ? { spaceReserveMiB: Number(reserveText) } : {}),
        }, renderer.onEvent);
        renderer.stop();
        // The last line: the snapshot view (schemaVersion, absolute image paths), README "JSON results".
        if (json || !process.stderr.isTTY) process.stdout.write(`${JSON.stringify({ type: 'result', snapshot: meta })}\n`);
        else process.stdout.write(`snapshot ${meta.id}: ${meta.consistency}${meta.consistency === 'clean' ? '' : ` (${meta.consistencyReason})`}, parent downtime ${meta.parentDowntimeMs} ms, strategy ${meta.strategy}, image ready ${(meta.timeToImageMs / 1000).toFixed(1)} s after the halt${meta.verification ? `, verification ${meta.verification.verdict}` : ''}\n`);
        // A kept snapshot that is not clean is not a plain success: its own exit code (README).
        return meta.consistency === 'clean' ? EXIT_CODES.OK : EXIT_CODES.CRASH_CONSISTENT;
      } finally {
        renderer.stop();
      }
    }
    case 'list': {
      const [vm, ...extra] = rest;
      refuseExtra(extra, 'forksnap snapshot list [VM]');
      if (vm) validateName('VM', vm);
      const metas = await viaDaemon(context, (daemon) => daemon.request<SnapshotView[]>('GET', `/v1/snapshots${vm ? `?vm=${encodeURIComponent(vm)}` : ''}`), () => listSnapshots(paths, vm));
      if (json) printJson(metas);
      else {
        const stored = (m: SnapshotView) => [...new Set(m.disks.map((disk) => (disk.image.backing ? `on ${disk.image.backing.snapshot}` : 'full')))].join(', ');
        printTable(metas.map((m) => ({ id: m.id, vm: m.vm, created: m.createdAt, consistency: m.consistency, strategy: m.strategy, 'downtime ms': m.parentDowntimeMs, disks: m.disks.length, 'own MiB': m.sizeOnDiskBytes === undefined ? undefined : (m.sizeOnDiskBytes / 1048576).toFixed(1), stored: stored(m), verified: m.verification?.verdict ?? 'never' })), ['id', 'vm', 'created', 'consistency', 'strategy', 'downtime ms', 'disks', 'own MiB', 'stored', 'verified']);
      }
      return 0;
    }
    case 'show': {
      const usage = 'forksnap snapshot show ID';
      const [id, ...extra] = rest;
      refuseExtra(extra, usage);
      requireArg(id, 'ID', usage);
      const meta = await viaDaemon(context, (daemon) => daemon.request<SnapshotView>('GET', `/v1/snapshots/${encodeURIComponent(id!)}`), () => loadSnapshot(paths, id!));
      if (json) printJson(meta);
      else {
        process.stdout.write(`${meta.id}\n  vm:           ${meta.vm}\n  created:      ${meta.createdAt}\n  consistency:  ${meta.consistency} (${meta.consistencyReason})\n  strategy:     ${meta.strategy}\n  downtime:     ${meta.parentDowntimeMs} ms\n  state ready:  ${meta.timeToStateMs} ms after the halt\n  image ready:  ${meta.timeToImageMs} ms after the halt\n  phases (ms):  ${Object.entries(meta.phasesMs).map(([k, v]) => `${k}=${Math.round(v)}`).join(' ')}\n`);
        for (const disk of meta.disks) process.stdout.write(`  disk ${disk.id}: ${disk.image.path} (${disk.image.format}, ${disk.image.sizeBytes} bytes, sha256 ${disk.image.sha256}) from ${disk.source} via ${disk.backend}${disk.image.backing ? `, an increment over ${disk.image.backing.snapshot} (${disk.image.backingPath})` : ''}\n`);
        for (const disk of meta.disks) if (disk.crashImage) process.stdout.write(`  disk ${disk.id} at the halt (crash-consistent): ${disk.crashImage.path}\n`);
        process.stdout.write(`  verification: ${meta.verification ? `${meta.verification.verdict} at ${meta.verification.at}` : 'never verified (forksnap snapshot verify)'}\n`);
      }
      return 0;
    }
    case 'verify': {
      const usage = 'forksnap snapshot verify ID [--json]';
      const [id, ...extra] = rest;
      refuseExtra(extra, usage);
      requireArg(id, 'ID', usage);
      // In-process even when a daemon runs: it only reads the store (and writes the verdict into meta.json).
      const { verification } = await verifySnapshot(paths, validateName('snapshot', id!), { signal: context.signal, log });
      if (json) printJson({ id, ...verification });
      else {
        printTable(verification.checks.map((check) => ({ disk: check.disk, check: check.check, target: check.target, status: check.status, detail: check.detail })), ['disk', 'check', 'target', 'status', 'detail']);
        process.stdout.write(`snapshot ${id}: verification ${verification.verdict} (${verification.durationMs} ms)\n`);
      }
      return verification.verdict === 'passed' ? EXIT_CODES.OK : EXIT_CODES.VERIFY_FAILED;
    }
    case 'export': {
      const usage = 'forksnap snapshot export ID --disk DISK (--to FILE [--format qcow2|raw] | --nbd SOCKET [--since ID2])';
      const [id, ...extra] = rest;
      refuseExtra(extra, usage);
      requireArg(id, 'ID', usage);
      validateName('snapshot', id!);
      const disk = requireArg(values.disk as string | undefined, '--disk DISK', usage);
      const to = values.to as string | undefined;
      const nbd = values.nbd as string | undefined;
      if ((to === undefined) === (nbd === undefined)) throw new ForksnapError('INVALID_INPUT', `give exactly one of --to FILE and --nbd SOCKET; usage: ${usage}`, {});
      if (values.format !== undefined && to === undefined) throw new ForksnapError('INVALID_INPUT', '--format applies to --to FILE only (NBD serves the guest disk itself)', {});
      if (values.since !== undefined && nbd === undefined) throw new ForksnapError('INVALID_INPUT', '--since applies to --nbd SOCKET only', {});
      // In-process even when a daemon runs: the export belongs to this command's lifetime.
      if (to !== undefined) {
        const format = values.format === undefined ? undefined : parseChoice(values.format, ['qcow2', 'raw'] as const, '--format');
        const exported = await exportToFile(paths, id!, disk, to, { format, signal: context.signal, log });
        if (json) printJson(exported);
        else process.stdout.write(`disk ${disk} of snapshot ${id} exported to ${exported.file} (${exported.format}, ${exported.sizeBytes} bytes)\n`);
        return EXIT_CODES.OK;
      }
      // Serve until SIGINT/SIGTERM/SIGHUP (the context's signal); one JSON line once it accepts clients.
      const since = values.since as string | undefined;
      if (since !== undefined) validateName('snapshot', since);
      const served = await serveNbd(paths, id!, disk, nbd!, { since, signal: context.signal, log });
      const serving = { snapshot: served.snapshot, disk: served.disk, socket: served.socket, exportName: served.exportName, uri: served.uri, ...(served.metaContext ? { since, metaContext: served.metaContext, changedBytes: served.changedBytes } : {}), pid: process.pid };
      if (json) process.stdout.write(`${JSON.stringify({ serving })}\n`);
      else process.stdout.write(`serving disk ${disk} of snapshot ${id} read-only at ${served.uri} (export "${served.exportName}")${served.metaContext ? `, blocks changed since ${since} as ${served.metaContext} (${served.changedBytes} bytes)` : ''}; stop with Ctrl-C or SIGTERM\n`);
      await served.done;
      if (!context.signal.aborted) throw new ForksnapError('TOOL_FAILED', `the NBD server of snapshot ${id} disk ${disk} stopped by itself (see the log)`, { snapshot: id, disk });
      if (json) process.stdout.write(`${JSON.stringify({ stopped: { socket: served.socket } })}\n`);
      return EXIT_CODES.OK;
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
      const connection = await openVmQmp(paths, record.name, endpointOf(record), { log, signal: context.signal });
      const qmp = connection.qmp;
      try {
        const result = await supportedStrategies(qmp, context.signal, record.pid);
        if (json) printJson(result);
        else printTable(STRATEGY_NAMES.map((name) => ({ strategy: name, supported: result.supported.includes(name) ? 'yes' : 'no', why: result.reasons[name] ?? '' })), ['strategy', 'supported', 'why']);
      } finally {
        connection.close();
      }
      return 0;
    }
    default:
      throw new ForksnapError('INVALID_INPUT', `unknown snapshot command "${command ?? ''}"; one of create, list, show, verify, export, delete, revert`, { command });
  }
}
