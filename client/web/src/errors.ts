// Errors with the wire codes of engine/errors.go (docs/protocol.md). Every
// failure the SDK reports is an MdsyncError; switch on `code`.

/** Codes the SDK acts on; engine/errors.go has the full list. */
export const Code = {
  OK: 0,
  /** 206: a newer login on the same platform took this device's slot. */
  LoginOtherDevice: 206,
  /** 207: the user was removed. */
  UserRemoved: 207,
  /** 214: too many devices (auto-login refused under keep-current). */
  TooManyDevices: 214,
  /** 216: the password was changed. */
  PasswordChanged: 216,
  /** 217: kicked by kickDevice / kickAllDevices, or a lowered limit. */
  KickedByOtherDevice: 217,
  InvalidArgument: 1001,
  TooLarge: 1004,
  NotFound: 1005,
  Conflict: 1006,
  Forbidden: 1008,
  Unavailable: 1009,
  Internal: 1010,
  Refused: 1011,
  Unauthenticated: 1013,
  RateLimited: 1014,
  Resync: 1015,
  SlowConsumer: 1016,
  HeartbeatTimeout: 1017,
  /** 1018: another process owns the user's partition; `addr` names it. */
  NotOwner: 1018,
  /** 1019: busy; retry after `retryAfterMs` (the SDK does). */
  Busy: 1019,
  /** Client-side: the connection was closed by close() or logout. */
  Closed: 1,
  /** Client-side: the network failed or a request timed out. */
  Network: 2,
} as const;

export type CodeValue = (typeof Code)[keyof typeof Code];

/** An error with a wire code. */
export class MdsyncError extends Error {
  readonly code: number;
  /** REST: the HTTP status; 0 for WebSocket errors. */
  readonly httpStatus: number;
  /** A refusal a retry may cure (1019, 1009, 1018 without addr): how long to wait first (retry_after_ms, or REST's Retry-After). */
  readonly retryAfterMs: number;
  /** 1018: the address of the process that owns the user. */
  readonly addr: string;

  constructor(code: number, message: string, extra: { httpStatus?: number; retryAfterMs?: number; addr?: string } = {}) {
    super(message === "" ? `error ${code}` : `error ${code}: ${message}`);
    this.name = "MdsyncError";
    this.code = code;
    this.httpStatus = extra.httpStatus ?? 0;
    this.retryAfterMs = extra.retryAfterMs ?? 0;
    this.addr = extra.addr ?? "";
  }
}

/** codeOf returns the code of an MdsyncError, else 0. */
export function codeOf(err: unknown): number {
  return err instanceof MdsyncError ? err.code : 0;
}

/** kickCode: the code ends a session; the device must not log itself back in. */
export function isKickCode(code: number): boolean {
  return code === Code.LoginOtherDevice || code === Code.UserRemoved || code === Code.PasswordChanged || code === Code.KickedByOtherDevice;
}
