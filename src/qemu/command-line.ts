/**
 * A QEMU command line as data: the binary and an ordered list of options. Knows QEMU's option
 * syntax (which options take no argument, QemuOpts "key=value,key=value" with ",," escaping and an
 * implied first key, and the JSON form of -blockdev/-device/-object/-netdev), nothing about what
 * the options mean.
 */

/** Options QEMU 7.2 declares without an argument (qemu-options.hx, DEF(name, 0, ...)). */
const FLAG_OPTIONS = new Set([
  'help', 'version', 'mem-prealloc', 'audio-help', 'snapshot', 'usb', 'nographic', 'portrait', 'full-screen',
  'win2k-hack', 'no-fd-bootchk', 'no-acpi', 'no-hpet', 'singlestep', 'preconfig', 'S', 's', 'enable-kvm',
  'xen-attach', 'xen-domid-restrict', 'no-reboot', 'no-shutdown', 'daemonize', 'only-migratable', 'nodefaults',
  'semihosting', 'old-param', 'no-user-config', 'async-teardown', 'enable-sync-profile', 'no-quit', 'h',
]);

/** The key QEMU assumes for a first element without '=' (e.g. `-netdev user,id=n0` means type=user). */
const IMPLIED_KEYS: Record<string, string> = {
  netdev: 'type',
  nic: 'type',
  net: 'type',
  device: 'driver',
  object: 'qom-type',
  chardev: 'backend',
  machine: 'type',
  M: 'type',
  audiodev: 'driver',
  accel: 'accel',
  smp: 'cpus',
  m: 'size',
  display: 'type',
  mon: 'chardev',
  boot: 'order',
  rtc: 'base',
};

export interface QemuOption {
  /** Option name without the leading dash(es), e.g. "drive". */
  readonly name: string;
  /** Raw argument, undefined for flags. */
  readonly value?: string;
}

export interface QemuCommandLine {
  readonly binary: string;
  readonly options: readonly QemuOption[];
}

export function parseArgv(argv: readonly string[]): QemuCommandLine {
  if (argv.length === 0) throw new Error('empty QEMU command line');
  const [binary, ...rest] = argv as [string, ...string[]];
  const options: QemuOption[] = [];
  for (let index = 0; index < rest.length; index++) {
    const arg = rest[index]!;
    if (!arg.startsWith('-')) {
      // A bare argument is the legacy "hda" image.
      options.push({ name: 'hda', value: arg });
      continue;
    }
    const name = arg.replace(/^--?/, '');
    if (FLAG_OPTIONS.has(name)) {
      options.push({ name });
      continue;
    }
    const value = rest[index + 1];
    if (value === undefined) throw new Error(`QEMU option -${name} is missing its argument`);
    options.push({ name, value });
    index++;
  }
  return { binary, options };
}

export function formatArgv(commandLine: QemuCommandLine): string[] {
  const argv = [commandLine.binary];
  for (const option of commandLine.options) {
    argv.push(`-${option.name}`);
    if (option.value !== undefined) argv.push(option.value);
  }
  return argv;
}

/** Ordered key/value pairs of a QemuOpts string. Duplicate keys are kept in order. */
export type OptEntries = [key: string, value: string][];

/** Split "a=1,b=x,,y,flag" into entries; ",," is a literal comma. The first element may be the implied key. */
export function parseOpts(text: string, impliedKey?: string): OptEntries {
  const parts: string[] = [];
  let current = '';
  for (let index = 0; index < text.length; index++) {
    const char = text[index];
    if (char === ',') {
      if (text[index + 1] === ',') {
        current += ',';
        index++;
        continue;
      }
      parts.push(current);
      current = '';
      continue;
    }
    current += char;
  }
  parts.push(current);
  const entries: OptEntries = [];
  parts.forEach((part, position) => {
    if (part === '') return;
    const equals = part.indexOf('=');
    if (equals < 0) {
      if (position === 0 && impliedKey) entries.push([impliedKey, part]);
      else entries.push([part, 'on']);
      return;
    }
    entries.push([part.slice(0, equals), part.slice(equals + 1)]);
  });
  return entries;
}

export function formatOpts(entries: OptEntries): string {
  return entries.map(([key, value]) => `${key}=${value.replaceAll(',', ',,')}`).join(',');
}

export function getOpt(entries: OptEntries, key: string): string | undefined {
  return entries.findLast(([entryKey]) => entryKey === key)?.[1];
}

export function impliedKeyFor(optionName: string): string | undefined {
  return IMPLIED_KEYS[optionName];
}

/** Whether the argument uses QEMU's JSON syntax (only some options accept it). */
export function isJsonValue(value: string): boolean {
  return value.trimStart().startsWith('{');
}

/**
 * A structured view of an option value: JSON objects as they are, QemuOpts as a flat record of
 * their last values (dotted keys stay dotted). Used to read properties such as id, driver, share.
 */
export function optionProperties(option: QemuOption): Record<string, unknown> {
  if (option.value === undefined) return {};
  if (isJsonValue(option.value)) {
    try {
      const parsed: unknown = JSON.parse(option.value);
      return typeof parsed === 'object' && parsed !== null ? (parsed as Record<string, unknown>) : {};
    } catch {
      return {};
    }
  }
  return Object.fromEntries(parseOpts(option.value, impliedKeyFor(option.name)));
}

/** QEMU boolean property spelling: on/yes/true/y vs off/no/false/n. */
export function isTruthy(value: unknown): boolean {
  if (typeof value === 'boolean') return value;
  return typeof value === 'string' && ['on', 'yes', 'true', 'y'].includes(value.toLowerCase());
}
