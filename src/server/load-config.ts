import { readFile } from 'node:fs/promises';
import { isMap, isNode, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';
import type { z } from 'zod';
import { ForksnapError } from '../errors.js';
import { daemonConfigSchema, defaultDaemonConfig, type DaemonConfig } from './daemon-config.js';

export const DEFAULT_CONFIG_FILE = '/etc/forksnap/config.yaml';

export interface ConfigIssue {
  readonly path: string;
  readonly line: number | undefined;
  readonly column: number | undefined;
  readonly message: string;
}

/**
 * Read and validate the daemon config. Without an explicit file, $FORKSNAP_CONFIG or
 * /etc/forksnap/config.yaml is used if it exists, else the defaults. Every problem is reported at
 * once, each as "FILE:LINE:COLUMN key.path: what is wrong" (CONFIG_INVALID).
 */
export async function loadDaemonConfig(file: string | undefined): Promise<{ config: DaemonConfig; file: string | undefined }> {
  const explicit = file ?? process.env.FORKSNAP_CONFIG;
  const chosen = explicit ?? DEFAULT_CONFIG_FILE;
  let text: string;
  try {
    text = await readFile(chosen, 'utf8');
  } catch (error) {
    if (!explicit && (error as NodeJS.ErrnoException).code === 'ENOENT') return { config: defaultDaemonConfig(), file: undefined };
    throw new ForksnapError('CONFIG_INVALID', `cannot read the config file ${chosen}: ${(error as Error).message}`, { file: chosen }, { cause: error });
  }
  return { config: parseDaemonConfig(text, chosen), file: chosen };
}

export function parseDaemonConfig(text: string, file: string): DaemonConfig {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const issues = doc.errors.map((error): ConfigIssue => ({ path: '', line: error.linePos?.[0].line, column: error.linePos?.[0].col, message: error.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '') }));
    throw configError(file, issues);
  }
  const raw: unknown = doc.toJS() ?? {};
  const parsed = daemonConfigSchema.safeParse(raw);
  if (parsed.success) return parsed.data;
  throw configError(file, parsed.error.issues.flatMap((issue) => describeIssue(doc, lineCounter, issue)).sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0)));
}

function describeIssue(doc: Document, lines: LineCounter, issue: z.core.$ZodIssue): ConfigIssue[] {
  const path = issue.path.filter((part): part is string | number => typeof part !== 'symbol');
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => ({ ...locate(doc, lines, [...path, key], true), path: formatPath([...path, key]), message: `unknown key "${key}" (allowed here: ${allowedKeysHint(issue)})` }));
  }
  if (issue.code === 'invalid_key') {
    return [{ ...locate(doc, lines, path, true), path: formatPath(path), message: `invalid key: ${issue.issues.map((inner) => inner.message).join('; ')}` }];
  }
  return [{ ...locate(doc, lines, path, false), path: formatPath(path), message: issue.message }];
}

function allowedKeysHint(issue: z.core.$ZodIssue): string {
  return issue.path.length === 0 ? 'server, jobs, hooks, vms' : 'check the spelling against docs/daemon.md';
}

/** Line and column of the node at `path` (its key for an unknown key), or of its nearest existing ancestor. */
function locate(doc: Document, lines: LineCounter, path: (string | number)[], atKey: boolean): { line: number | undefined; column: number | undefined } {
  for (let depth = path.length; depth > 0; depth--) {
    const parent: unknown = depth > 1 ? doc.getIn(path.slice(0, depth - 1), true) : doc.contents;
    const last = path[depth - 1];
    let target: unknown;
    if (isMap(parent)) {
      const pair = parent.items.find((item) => isScalar(item.key) && String(item.key.value) === String(last));
      if (pair) target = atKey && depth === path.length ? pair.key : (pair.value ?? pair.key);
    } else if (isSeq(parent) && typeof last === 'number') {
      target = parent.items[last];
    }
    if (isNode(target) && target.range) return position(lines, target.range[0]);
  }
  if (isNode(doc.contents) && doc.contents.range) return position(lines, doc.contents.range[0]);
  return { line: undefined, column: undefined };
}

function position(lines: LineCounter, offset: number): { line: number; column: number } {
  const { line, col } = lines.linePos(offset);
  return { line, column: col };
}

function formatPath(path: (string | number)[]): string {
  return path.map((part, index) => (typeof part === 'number' ? `[${part}]` : index === 0 ? part : `.${part}`)).join('') || '(top level)';
}

function configError(file: string, issues: ConfigIssue[]): ForksnapError {
  const lines = issues.map((issue) => `  ${file}:${issue.line ?? '?'}:${issue.column ?? '?'} ${issue.path ? `${issue.path}: ` : ''}${issue.message}`);
  return new ForksnapError('CONFIG_INVALID', `the config file ${file} is invalid:\n${lines.join('\n')}`, { file, issues });
}
