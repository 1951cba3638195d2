import { z } from 'zod';
import { ForksnapError } from './errors.js';

/**
 * Names of VMs and snapshots become directory names: letters, digits, '.', '_', '-', starting
 * with a letter or digit, at most 64 characters. No '/', no '..', no leading dot.
 */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export const nameSchema = z
  .string()
  .regex(NAME_PATTERN, 'must be 1-64 characters of letters, digits, ".", "_" or "-", starting with a letter or digit')
  .refine((name) => !name.includes('..'), 'must not contain ".."');

export function validateName(kind: 'VM' | 'snapshot', name: string): string {
  if (!NAME_PATTERN.test(name) || name.includes('..')) {
    throw new ForksnapError('INVALID_NAME', `invalid ${kind} name ${JSON.stringify(name)}: use 1-64 characters of letters, digits, ".", "_" or "-", starting with a letter or digit (no "/" or "..")`, { kind, name });
  }
  return name;
}
