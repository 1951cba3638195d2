import { ForksnapError, type ErrorCode } from '../errors.js';

/**
 * QEMU answered a command with {"error": {...}}, or the connection dropped while it was pending.
 * Keeps what was sent and what came back as fields.
 */
export class QmpError extends ForksnapError {
  override readonly name = 'QmpError';

  constructor(
    code: Extract<ErrorCode, 'QMP_COMMAND_FAILED' | 'QMP_DISCONNECTED' | 'QMP_PROTOCOL'>,
    message: string,
    readonly sent: { execute: string; arguments?: unknown },
    readonly received?: unknown,
    readonly errorClass?: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, { qmpCommand: sent.execute, qmpArguments: sent.arguments, qmpReply: received, errorClass }, options);
  }
}
