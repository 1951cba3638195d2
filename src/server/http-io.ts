import type { IncomingMessage, ServerResponse } from 'node:http';
import type { z } from 'zod';
import { ForksnapError, errorMessage, isForksnapError } from '../errors.js';

/** Reading JSON requests and writing JSON answers; every error answer is `{"error": {code, message, context}}`. */

export async function readJsonBody(request: IncomingMessage, maxBytes: number): Promise<unknown> {
  const declared = Number(request.headers['content-length'] ?? Number.NaN);
  if (declared > maxBytes) throw tooLarge(maxBytes);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    size += (chunk as Buffer).length;
    if (size > maxBytes) throw tooLarge(maxBytes);
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw new ForksnapError('INVALID_JSON', `the request body is not valid JSON (${errorMessage(error)}); send a JSON object with Content-Type: application/json`, {});
  }
}

function tooLarge(maxBytes: number): ForksnapError {
  return new ForksnapError('BODY_TOO_LARGE', `the request body is larger than ${maxBytes} bytes (server.maxBodyBytes)`, { maxBytes });
}

/** Validate with zod; failures name each wrong field. */
export function parseWith<T extends z.ZodType>(schema: T, value: unknown, what: string): z.infer<T> {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  const issues = parsed.error.issues.map((issue) => ({ path: issue.path.map(String).join('.') || '(root)', message: issue.message }));
  throw new ForksnapError('INVALID_INPUT', `invalid ${what}: ${issues.map((issue) => `${issue.path}: ${issue.message}`).join('; ')}`, { issues });
}

export function sendJson(response: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  response.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  response.end(text);
}

export function toHttpError(error: unknown): ForksnapError {
  return isForksnapError(error) ? error : new ForksnapError('INTERNAL', errorMessage(error), {}, { cause: error });
}

export function sendError(response: ServerResponse, error: ForksnapError): void {
  if (response.headersSent) {
    response.destroy();
    return;
  }
  // An unread oversized body: answer, then close the connection instead of draining it.
  if (error.code === 'BODY_TOO_LARGE') response.setHeader('connection', 'close');
  if (error.code === 'UNAUTHORIZED') response.setHeader('www-authenticate', 'Bearer realm="forksnap"');
  sendJson(response, error.httpStatus, { error: error.toJSON() });
}
