import { describe, expect, it } from 'vitest';
import { ForksnapError } from '../../src/errors.js';
import { nameSchema, validateName } from '../../src/validate-name.js';

describe('validateName', () => {
  it.each(['vm1', 'VM_2', 'db-primary.2024', '9', 'a'.repeat(64)])('accepts %j', (name) => {
    expect(validateName('VM', name)).toBe(name);
    expect(nameSchema.safeParse(name).success).toBe(true);
  });

  it.each(['', '.', '..', '../x', 'a/b', '.hidden', '-flag', 'a..b', 'a b', 'a\u0000b', 'x'.repeat(65), 'é'])('refuses %j with INVALID_NAME', (name) => {
    let error: unknown;
    try {
      validateName('snapshot', name);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ForksnapError);
    expect((error as ForksnapError).code).toBe('INVALID_NAME');
    expect((error as ForksnapError).context).toEqual({ kind: 'snapshot', name });
    expect((error as ForksnapError).message).toContain(`invalid snapshot name ${JSON.stringify(name)}`);
  });
});
