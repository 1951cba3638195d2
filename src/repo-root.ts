import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository (or installed package) root: libexec/, scripts/ and package.json live there. dist/x.js and src/x.ts are one level below. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
