/**
 * The one error root of forksnap and the registry of its stable codes.
 *
 *   ForksnapError                 code from ERROR_CODES, context in fields, cause in `cause`
 *   ├── QmpError                  (src/qmp/errors.ts) what was sent and what came back
 *   └── everything else           thrown as ForksnapError with a specific code
 *
 * Cancellation is never wrapped: code that catches rethrows `signal.reason` untouched.
 * Codes are part of the public contract (CLI exit codes, JSON output, HTTP API): never rename one.
 */

interface CodeInfo {
  /** HTTP status the daemon answers with. */
  readonly http: number;
  /** Process exit code of the CLI (EXIT_CODES below): 1 failure, 2 bad input, 3 refused, 4 not found, 5 hook failed, 7 not clean, 8 verification failed. */
  readonly exit: number;
  readonly summary: string;
}

export const ERROR_CODES = {
  INVALID_INPUT: { http: 400, exit: 2, summary: 'the input does not validate' },
  INVALID_NAME: { http: 400, exit: 2, summary: 'a name is not allowed (path separators, dots, length)' },
  INVALID_SPEC: { http: 400, exit: 2, summary: 'a VM spec file does not validate' },
  VM_NOT_FOUND: { http: 404, exit: 4, summary: 'no VM of that name is registered' },
  VM_EXISTS: { http: 409, exit: 3, summary: 'a VM of that name is already registered' },
  VM_NOT_RUNNING: { http: 409, exit: 3, summary: 'the VM is not in the running state' },
  VM_RUNNING: { http: 409, exit: 3, summary: 'the VM is running and must be stopped first' },
  VM_MANAGED: { http: 409, exit: 3, summary: 'the VM is managed by libvirt: start and stop it there (virsh)' },
  VM_BUSY: { http: 409, exit: 3, summary: 'another job holds this VM, or it is migrating or runs block jobs' },
  VM_UNREACHABLE: { http: 503, exit: 3, summary: 'the VM does not answer on its QMP socket' },
  VM_NO_WRITABLE_DISK: { http: 422, exit: 3, summary: 'the VM has no writable disk: there is nothing to snapshot' },
  RECOVERY_PENDING: { http: 409, exit: 3, summary: 'an interrupted job on this VM has not been unwound yet (run forksnap recover, or start the daemon)' },
  VM_START_FAILED: { http: 500, exit: 1, summary: 'QEMU did not start' },
  VM_UNSUPPORTED_DEVICE: { http: 422, exit: 3, summary: 'the VM has a device forksnap cannot clone safely' },
  VM_CONFIG_MISMATCH: { http: 422, exit: 3, summary: 'the child QEMU does not match the running VM' },
  SNAPSHOT_NOT_FOUND: { http: 404, exit: 4, summary: 'no snapshot of that id' },
  SNAPSHOT_EXISTS: { http: 409, exit: 3, summary: 'a snapshot of that id exists' },
  QEMU_NOT_FOUND: { http: 500, exit: 1, summary: 'no usable QEMU binary' },
  QEMU_EXITED: { http: 500, exit: 1, summary: 'a QEMU process exited unexpectedly' },
  QEMU_ABNORMAL_SHUTDOWN: { http: 500, exit: 1, summary: 'a QEMU process forksnap started would not die (quit, SIGTERM and SIGKILL all failed)' },
  QMP_CONNECT_FAILED: { http: 502, exit: 1, summary: 'could not connect to a QMP socket' },
  QMP_COMMAND_FAILED: { http: 502, exit: 1, summary: 'QEMU answered a command with an error' },
  QMP_DISCONNECTED: { http: 502, exit: 1, summary: 'the QMP connection dropped while commands were pending' },
  QMP_PROTOCOL: { http: 502, exit: 1, summary: 'QEMU sent something that is not QMP' },
  STRATEGY_UNSUPPORTED: { http: 422, exit: 3, summary: 'the requested capture strategy is not supported by this QEMU' },
  DISK_BACKEND_UNSUPPORTED: { http: 422, exit: 3, summary: 'the requested disk backend cannot be used for this disk' },
  PREFLIGHT_FAILED: { http: 500, exit: 1, summary: 'the preflight checks failed unexpectedly (nothing was changed)' },
  PREPARE_FAILED: { http: 500, exit: 1, summary: 'preparing the disk-snapshot files or the child QEMU failed' },
  HALT_FAILED: { http: 500, exit: 1, summary: 'halting the parent VM failed' },
  DISK_SNAPSHOT_FAILED: { http: 500, exit: 1, summary: 'taking the point-in-time disk snapshot failed' },
  CAPTURE_FAILED: { http: 500, exit: 1, summary: 'streaming the VM state into the child failed' },
  ISOLATION_FAILED: { http: 500, exit: 1, summary: 'the child could not be isolated' },
  SHUTDOWN_FAILED: { http: 500, exit: 1, summary: 'driving the child shutdown failed' },
  MATERIALISE_FAILED: { http: 500, exit: 1, summary: 'writing the snapshot image failed' },
  MERGE_FAILED: { http: 500, exit: 1, summary: 'merging the parent overlay back failed' },
  FINISH_FAILED: { http: 500, exit: 1, summary: 'finishing the snapshot (dropping the disk views, writing meta.json) failed' },
  CLEANUP_FAILED: { http: 500, exit: 1, summary: 'a clean-up step failed; the job journal is kept for recovery' },
  MIGRATION_RESTORE_FAILED: { http: 500, exit: 1, summary: 'the parent\'s migration capabilities or parameters could not all be set back to the values they had before the job' },
  PARENT_RESUME_FAILED: { http: 500, exit: 1, summary: 'the parent VM could not be resumed' },
  PHASE_TIMEOUT: { http: 504, exit: 1, summary: 'a phase took longer than its timeout' },
  NO_SPACE: { http: 507, exit: 1, summary: 'not enough free space for the snapshot images or the fleecing storage (nothing was started)' },
  TOOL_FAILED: { http: 500, exit: 1, summary: 'an external tool failed' },
  CANCELLED: { http: 499, exit: 130, summary: 'the operation was cancelled' },
  NOT_CLEAN: { http: 422, exit: 7, summary: 'the snapshot came out crash-consistent and --require-clean (requireClean) was given: it was not kept' },
  VERIFY_FAILED: { http: 422, exit: 8, summary: 'a stored snapshot failed verification (checksum, qemu-img check or a guest filesystem check)' },
  HOOK_FAILED: { http: 500, exit: 5, summary: 'a pre or post hook command failed (a failing pre hook aborts before the halt)' },
  CONFIG_INVALID: { http: 400, exit: 2, summary: 'the daemon configuration file does not validate' },
  INVALID_JSON: { http: 400, exit: 2, summary: 'the request body is not valid JSON' },
  BODY_TOO_LARGE: { http: 413, exit: 2, summary: 'the request body exceeds the daemon\'s limit' },
  UNAUTHORIZED: { http: 401, exit: 3, summary: 'a bearer token is required and was missing or wrong' },
  ROUTE_NOT_FOUND: { http: 404, exit: 4, summary: 'no API route at that path' },
  METHOD_NOT_ALLOWED: { http: 405, exit: 2, summary: 'the route exists but not for that HTTP method' },
  JOB_NOT_FOUND: { http: 404, exit: 4, summary: 'no job of that id' },
  JOB_FINISHED: { http: 409, exit: 3, summary: 'the job has already finished' },
  DAEMON_SHUTTING_DOWN: { http: 503, exit: 1, summary: 'the daemon is shutting down and accepts no new jobs' },
  DAEMON_RUNNING: { http: 409, exit: 3, summary: 'another daemon already listens on that socket' },
  DAEMON_UNREACHABLE: { http: 503, exit: 1, summary: 'the daemon socket does not answer' },
  DAEMON_INTERRUPTED: { http: 500, exit: 1, summary: 'the daemon stopped while the job ran; the job was unwound when it restarted' },
  INTERNAL: { http: 500, exit: 1, summary: 'internal error' },
} as const satisfies Record<string, CodeInfo>;

export type ErrorCode = keyof typeof ERROR_CODES;

/**
 * Every process exit code of the CLI (README "Exit codes"). All but OK and CRASH_CONSISTENT come
 * from an error's code (ERROR_CODES[code].exit); CRASH_CONSISTENT is a success that is not clean:
 * `snapshot create` kept a snapshot labelled crash-consistent.
 */
export const EXIT_CODES = {
  OK: 0,
  FAILURE: 1,
  BAD_INPUT: 2,
  REFUSED: 3,
  NOT_FOUND: 4,
  HOOK_FAILED: 5,
  CRASH_CONSISTENT: 6,
  NOT_CLEAN: 7,
  VERIFY_FAILED: 8,
  CANCELLED: 130,
} as const;

export type ErrorContext = Record<string, unknown>;

export class ForksnapError extends Error {
  override readonly name: string = 'ForksnapError';
  readonly code: ErrorCode;
  readonly context: ErrorContext;

  constructor(code: ErrorCode, message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.context = context;
  }

  get httpStatus(): number {
    return ERROR_CODES[this.code].http;
  }

  get exitCode(): number {
    return ERROR_CODES[this.code].exit;
  }

  /** JSON shape used by the CLI's --json output and the HTTP API. */
  toJSON(): { code: ErrorCode; message: string; context: ErrorContext; cause?: string } {
    const cause = this.cause instanceof Error ? this.cause.message : undefined;
    return { code: this.code, message: this.message, context: this.context, ...(cause ? { cause } : {}) };
  }
}

export function isForksnapError(error: unknown, code?: ErrorCode): error is ForksnapError {
  return error instanceof ForksnapError && (code === undefined || error.code === code);
}

/** Wrap an unknown failure into a ForksnapError with the given code, keeping ForksnapErrors as they are. */
export function toForksnapError(error: unknown, code: ErrorCode, message: string, context: ErrorContext = {}): ForksnapError {
  if (error instanceof ForksnapError) return error;
  const detail = error instanceof Error ? error.message : String(error);
  return new ForksnapError(code, `${message}: ${detail}`, context, { cause: error });
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
