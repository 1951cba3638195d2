import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { ForksnapError } from '../errors.js';

export interface CliContext {
  readonly paths: Paths;
  readonly log: Logger;
  readonly json: boolean;
  readonly signal: AbortSignal;
  readonly values: Record<string, unknown>;
}

export function requireArg(value: string | undefined, what: string, usage: string): string {
  if (!value) throw new ForksnapError('INVALID_INPUT', `missing ${what}; usage: ${usage}`, { missing: what });
  return value;
}

export function refuseExtra(rest: string[], usage: string): void {
  if (rest.length > 0) throw new ForksnapError('INVALID_INPUT', `unexpected argument(s) ${rest.join(' ')}; usage: ${usage}`, { extra: rest });
}
