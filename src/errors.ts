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
  /** Process exit code of the CLI. 2 = bad input, 3 = refused precondition, 4 = not found, 5 = a hook failed, 1 = failure. */
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
  VM_BUSY: { http: 409, exit: 3, summary: 'another job holds this VM' },
  VM_START_FAILED: { http: 500, exit: 1, summary: 'QEMU did not start' },
  VM_UNSUPPORTED_DEVICE: { http: 422, exit: 3, summary: 'the VM has a device forksnap cannot clone safely' },
  VM_CONFIG_MISMATCH: { http: 422, exit: 3, summary: 'the child QEMU does not match the running VM' },
  SNAPSHOT_NOT_FOUND: { http: 404, exit: 4, summary: 'no snapshot of that id' },
  SNAPSHOT_EXISTS: { http: 409, exit: 3, summary: 'a snapshot of that id exists' },
  QEMU_NOT_FOUND: { http: 500, exit: 1, summary: 'no usable QEMU binary' },
  QEMU_EXITED: { http: 500, exit: 1, summary: 'a QEMU process exited unexpectedly' },
  QMP_CONNECT_FAILED: { http: 502, exit: 1, summary: 'could not connect to a QMP socket' },
  QMP_COMMAND_FAILED: { http: 502, exit: 1, summary: 'QEMU answered a command with an error' },
  QMP_DISCONNECTED: { http: 502, exit: 1, summary: 'the QMP connection dropped while commands were pending' },
  QMP_PROTOCOL: { http: 502, exit: 1, summary: 'QEMU sent something that is not QMP' },
  STRATEGY_UNSUPPORTED: { http: 422, exit: 3, summary: 'the requested capture strategy is not supported by this QEMU' },
  DISK_BACKEND_UNSUPPORTED: { http: 422, exit: 3, summary: 'the requested disk backend cannot be used for this disk' },
  DISK_SNAPSHOT_FAILED: { http: 500, exit: 1, summary: 'taking the point-in-time disk snapshot failed' },
  CAPTURE_FAILED: { http: 500, exit: 1, summary: 'streaming the VM state into the child failed' },
  ISOLATION_FAILED: { http: 500, exit: 1, summary: 'the child could not be isolated' },
  SHUTDOWN_FAILED: { http: 500, exit: 1, summary: 'driving the child shutdown failed' },
  MATERIALISE_FAILED: { http: 500, exit: 1, summary: 'writing the snapshot image failed' },
  MERGE_FAILED: { http: 500, exit: 1, summary: 'merging the parent overlay back failed' },
  PARENT_RESUME_FAILED: { http: 500, exit: 1, summary: 'the parent VM could not be resumed' },
  PHASE_TIMEOUT: { http: 504, exit: 1, summary: 'a phase took longer than its timeout' },
  TOOL_FAILED: { http: 500, exit: 1, summary: 'an external tool failed' },
  CANCELLED: { http: 499, exit: 130, summary: 'the operation was cancelled' },
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
