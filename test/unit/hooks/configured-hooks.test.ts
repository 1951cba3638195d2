import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { hooksFor, loadConfiguredHooks } from '../../../src/hooks/configured-hooks.js';
import { parseDaemonConfig } from '../../../src/server/load-config.js';
import { tempPaths, type TempPaths } from '../../helpers/temp-paths.js';

describe('configured hooks (daemon and in-process CLI alike)', () => {
  let temp: TempPaths;
  const savedConfig = process.env.FORKSNAP_CONFIG;
  beforeEach(async () => {
    temp = await tempPaths();
  });
  afterEach(async () => {
    if (savedConfig === undefined) delete process.env.FORKSNAP_CONFIG;
    else process.env.FORKSNAP_CONFIG = savedConfig;
    await temp.cleanup();
  });

  const yaml = [
    'hooks:',
    '  pre: [{ command: ["/bin/true", "global-pre"] }]',
    '  post: [{ command: ["/bin/true", "global-post"] }]',
    'vms:',
    '  db1:',
    '    hooks:',
    '      pre: [{ command: ["/bin/true", "db1-pre"] }]',
    '      post: [{ command: ["/bin/true", "db1-post"] }]',
    '',
  ].join('\n');
  const commands = (hooks: { command: string[] | string }[]) => hooks.map((hook) => (hook.command as string[])[1]);

  it('orders global pre hooks before the VM\'s own and global post hooks after them', () => {
    const hooks = hooksFor(parseDaemonConfig(yaml, 'config.yaml'), 'db1');
    expect(commands(hooks.pre)).toEqual(['global-pre', 'db1-pre']);
    expect(commands(hooks.post)).toEqual(['db1-post', 'global-post']);
    expect(commands(hooksFor(parseDaemonConfig(yaml, 'config.yaml'), 'other').pre)).toEqual(['global-pre']);
  });

  it('reads the file given with --config, or $FORKSNAP_CONFIG', async () => {
    const file = path.join(temp.root, 'config.yaml');
    await writeFile(file, yaml);
    const explicit = await loadConfiguredHooks(file, 'db1');
    expect(explicit.file).toBe(file);
    expect(commands(explicit.hooks.pre)).toEqual(['global-pre', 'db1-pre']);
    process.env.FORKSNAP_CONFIG = file;
    expect(commands((await loadConfiguredHooks(undefined, 'db1')).hooks.post)).toEqual(['db1-post', 'global-post']);
  });

  it('refuses a missing or invalid explicit file instead of running without hooks', async () => {
    await expect(loadConfiguredHooks(path.join(temp.root, 'missing.yaml'), 'db1')).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
    const bad = path.join(temp.root, 'bad.yaml');
    await writeFile(bad, 'hooks:\n  pre: [{ command: "no shell given" }]\n');
    await expect(loadConfiguredHooks(bad, 'db1')).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
  });
});
