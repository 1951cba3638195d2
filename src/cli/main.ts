import { setMaxListeners } from 'node:events';
import { parseArgs } from 'node:util';
import { resolvePaths } from '../config.js';
import { ForksnapError } from '../errors.js';
import { configureLogging } from '../log.js';
import { recoverCommand } from './recover-command.js';
import { serveCommand } from './serve-command.js';
import { demoCommand } from './demo-command.js';
import { benchCommand } from './bench-command.js';
import { snapshotCommands } from './snapshot-commands.js';
import { vmCommands } from './vm-commands.js';
import { reportError } from './output.js';
import type { CliContext } from './context.js';

const USAGE = `forksnap — fully consistent snapshots of running QEMU VMs

Usage:
  forksnap vm start SPEC.json [--qemu-base 7.2|10.0]  start a VM from a spec file (the patched QEMU of that base)
  forksnap vm attach NAME --qmp SOCKET [--pid PID] adopt a running QEMU
  forksnap vm attach NAME --libvirt DOMAIN [--connect URI]  adopt a libvirt domain (default URI qemu:///system)
  forksnap vm list                                 list VMs
  forksnap vm stop NAME [--powerdown]              stop a VM
  forksnap vm remove NAME                          forget a stopped VM
  forksnap snapshot create VM [--name ID] [--strategy auto|fork|fork-postcopy|background-snapshot|precopy]
                              [--background-push off|on|MIB_PER_S] (fork-postcopy: pages sent besides those the child asks for)
                              [--disk-backend auto|reflink|fleecing] [--shutdown-timeout SEC] [--space-reserve MIB]
                              [--keep-crash-image] [--label KEY=VALUE]... [--max-bandwidth MIB_PER_S]
                              [--require-clean] [--verify] [--full]  (default: stored as an increment over the VM's last snapshot)
  forksnap snapshot list [VM]                      list snapshots
  forksnap snapshot show ID                        show a snapshot's metadata
  forksnap snapshot verify ID                      re-check a stored snapshot: checksums, qemu-img check, guest filesystems
  forksnap snapshot export ID --disk DISK --to FILE [--format qcow2|raw]  a self-contained copy of one disk
  forksnap snapshot export ID --disk DISK --nbd SOCKET [--since ID2]  serve one disk read-only over NBD until SIGINT/SIGTERM
                                                   (--since: blocks changed since ID2 as qemu:dirty-bitmap:ID2)
  forksnap snapshot delete ID                      delete a snapshot's images and metadata
  forksnap snapshot revert ID [--vm NAME] [--restart]  put a snapshot's images back on a VM
  forksnap recover [VM]                            unwind interrupted jobs (their forksnap process died) from their journals
  forksnap strategies VM                           capture strategies this VM's QEMU supports
  forksnap demo [--memory MIB] [--strategy S] [--keep]  boot the demo guest, snapshot it under load, verify
  forksnap demo --db [--strategy S]                PostgreSQL under load: snapshot, boot it, compare with disk-only
  forksnap bench [--sizes 512,1024,2048] [--repeat 5] [--out docs/bench]  benchmark the strategies against baselines
  forksnap serve [--config FILE] [--socket PATH] [--listen HOST:PORT --token-file FILE] [--max-concurrent-jobs N]
                                                   run the daemon (HTTP+WebSocket API, schedules, hooks)

Global options:
  --json              machine-readable output (JSON; progress as JSON lines)
  --state-dir DIR     state directory (default $FORKSNAP_STATE_DIR or /var/lib/forksnap)
  --log-level LEVEL   pino level (default info); logs go to stderr or --log-file
  --log-file FILE     write logs to FILE
  --socket PATH       daemon socket (default $FORKSNAP_SOCKET or <state-dir>/forksnap.sock); commands use
                      the daemon when it answers there, else run in-process
  --no-daemon         always run in-process
Exit codes: 0 ok, 1 failure, 2 bad input, 3 refused (precondition), 4 not found, 5 a hook failed,
  6 snapshot kept but crash-consistent, 7 not clean with --require-clean (nothing kept),
  8 verification failed, 130 cancelled.
`;

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        json: { type: 'boolean', default: false },
        'state-dir': { type: 'string' },
        'log-level': { type: 'string' },
        'log-file': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
        qmp: { type: 'string' },
        libvirt: { type: 'string' },
        'qemu-base': { type: 'string' },
        connect: { type: 'string' },
        pid: { type: 'string' },
        powerdown: { type: 'boolean', default: false },
        name: { type: 'string' },
        strategy: { type: 'string' },
        'disk-backend': { type: 'string' },
        'shutdown-timeout': { type: 'string' },
        'max-bandwidth': { type: 'string' },
        'background-push': { type: 'string' },
        'space-reserve': { type: 'string' },
        'keep-crash-image': { type: 'boolean', default: false },
        'require-clean': { type: 'boolean', default: false },
        verify: { type: 'boolean', default: false },
        full: { type: 'boolean', default: false },
        incremental: { type: 'boolean', default: false },
        disk: { type: 'string' },
        to: { type: 'string' },
        format: { type: 'string' },
        nbd: { type: 'string' },
        since: { type: 'string' },
        label: { type: 'string', multiple: true },
        vm: { type: 'string' },
        restart: { type: 'boolean', default: false },
        memory: { type: 'string' },
        keep: { type: 'boolean', default: false },
        db: { type: 'boolean', default: false },
        socket: { type: 'string' },
        'no-daemon': { type: 'boolean', default: false },
        config: { type: 'string' },
        listen: { type: 'string' },
        'token-file': { type: 'string' },
        'max-concurrent-jobs': { type: 'string' },
        sizes: { type: 'string' },
        repeat: { type: 'string' },
        out: { type: 'string' },
      },
    });
  } catch (error) {
    process.stderr.write(`forksnap: error [INVALID_INPUT]: ${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help || positionals.length === 0) {
    process.stdout.write(USAGE);
    return values.help ? 0 : 2;
  }
  const log = configureLogging({ level: values['log-level'] ?? (values.json ? 'warn' : undefined), file: values['log-file'] });
  const controller = new AbortController();
  setMaxListeners(0, controller.signal);
  const onSignal = (signal: NodeJS.Signals) => {
    log.warn({ signal }, 'signal received: cancelling, the parent VM will be resumed and temporary files removed');
    controller.abort(new ForksnapError('CANCELLED', `cancelled by ${signal}`, { signal }));
  };
  // SIGHUP (the SSH session or terminal went away) unwinds like SIGINT/SIGTERM.
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
  const context: CliContext = { paths: resolvePaths({ stateDir: values['state-dir'] }), log, json: values.json ?? false, signal: controller.signal, values };
  try {
    const [group, command, ...rest] = positionals;
    if (group === 'vm') return await vmCommands(context, command, rest);
    if (group === 'snapshot') return await snapshotCommands(context, command, rest);
    if (group === 'demo') return await demoCommand(context);
    if (group === 'bench') return await benchCommand(context, [command, ...rest].filter((arg): arg is string => arg !== undefined));
    if (group === 'recover') return await recoverCommand(context, [command, ...rest].filter((arg): arg is string => arg !== undefined));
    if (group === 'strategies') return await snapshotCommands(context, 'strategies', [command ?? '', ...rest]);
    if (group === 'serve') return await serveCommand(context, [command, ...rest].filter((arg): arg is string => arg !== undefined));
    throw new ForksnapError('INVALID_INPUT', `unknown command "${group}"; see forksnap --help`, { command: group });
  } catch (error) {
    return reportError(error, context.json);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('SIGHUP', onSignal);
  }
}
