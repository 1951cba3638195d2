import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import path from 'node:path';

/**
 * A pino destination that creates its file only when the first line at warn level or above
 * arrives (the supervisor acts), writing the lines buffered before it first. Synchronous writes:
 * the supervisor ends with process.exit() and must not lose its last lines.
 */
export class LazyLogFile {
  #fd: number | undefined;
  #buffered: string[] = [];

  constructor(private readonly file: string, private readonly threshold = 40) {}

  write(line: string): void {
    if (this.#fd === undefined) {
      const level = Number(/"level":(\d+)/.exec(line)?.[1] ?? 0);
      if (level < this.threshold) {
        this.#buffered.push(line);
        return;
      }
      mkdirSync(path.dirname(this.file), { recursive: true });
      this.#fd = openSync(this.file, 'a', 0o600);
      for (const earlier of this.#buffered) writeSync(this.#fd, earlier);
      this.#buffered = [];
    }
    writeSync(this.#fd, line);
  }

  close(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
  }
}
