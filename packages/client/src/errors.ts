/**
 * Every failure the client reports. For an answer of the server, `code`, `message` and
 * `details` are the server's (docs/protocol.md, "Errors") and `status` its HTTP status. Errors
 * of the client itself have codes of their own: `network` (no answer), `bad_response` (an
 * answer that is not the protocol's), `precision_loss` (an integer beyond 2^53 - 1),
 * `connection_lost` (the event stream was given up), `closed` (the client was closed).
 */
export class ForgeError extends Error {
  readonly code: string;
  readonly status?: number;
  readonly details?: unknown;
  readonly correlationId?: string;

  constructor(
    code: string,
    message: string,
    options: { status?: number; details?: unknown; correlationId?: string; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "ForgeError";
    this.code = code;
    if (options.status !== undefined) this.status = options.status;
    if (options.details !== undefined) this.details = options.details;
    if (options.correlationId !== undefined) this.correlationId = options.correlationId;
  }

  /** The argument or field the server named (`details.field`), if any. */
  get field(): string | undefined {
    const d = this.details as { field?: unknown } | undefined;
    return typeof d?.field === "string" ? d.field : undefined;
  }

  /** The error of a protocol envelope `{ code, message, details?, correlationId? }`. */
  static fromEnvelope(body: unknown, status?: number): ForgeError {
    const e = body as { code?: unknown; message?: unknown; details?: unknown; correlationId?: unknown };
    if (e && typeof e.code === "string" && typeof e.message === "string") {
      return new ForgeError(e.code, e.message, {
        status,
        details: e.details,
        correlationId: typeof e.correlationId === "string" ? e.correlationId : undefined,
      });
    }
    return new ForgeError("bad_response", `unexpected error answer${status ? ` (HTTP ${status})` : ""}`, {
      status,
    });
  }
}

/** Whether `e` says the event-stream session a call named is gone (ended, another node). */
export function isSessionGone(e: unknown): boolean {
  if (!(e instanceof ForgeError) || e.code !== "not_found") return false;
  return e.field === "sessionId" || e.field === "follow.sessionId";
}

/** `e` as a ForgeError, wrapping what is not one. */
export function toForgeError(e: unknown): ForgeError {
  if (e instanceof ForgeError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new ForgeError("network", message, { cause: e });
}
