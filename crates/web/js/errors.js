// SdError, the conversion of anything thrown into one, and its form on the wire between the
// page and the worker.

/** Every code an SdError can carry. */
export const ERROR_CODES = Object.freeze([
  "NO_WEBGPU",
  "MODEL_NOT_FOUND",
  "MODEL_INVALID",
  "NETWORK",
  "INTEGRITY",
  "QUOTA",
  "INVALID_REQUEST",
  "DEVICE_LOST",
  "OUT_OF_MEMORY",
  "ABORTED",
  "DISPOSED",
  "INTERNAL",
]);

const KNOWN_CODES = new Set(ERROR_CODES);

/** The one error type the package rejects with; `code` says what went wrong. */
export class SdError extends Error {
  /**
   * @param {string} message what happened, for a person
   * @param {string} [code] one of ERROR_CODES; anything else becomes "INTERNAL"
   * @param {{ cause?: unknown, field?: string }} [options] `field`: the request field an
   *   INVALID_REQUEST is about (camelCase, e.g. "width", "initImage")
   */
  constructor(message, code = "INTERNAL", options = undefined) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "SdError";
    this.code = KNOWN_CODES.has(code) ? code : "INTERNAL";
    const field = options?.field ?? requestField(this.code, message);
    if (field) this.field = field;
  }
}

// An INVALID_REQUEST message starts with the field it is about ("width: must be ..."), as the
// wasm module and this package write them.
function requestField(code, message) {
  if (code !== "INVALID_REQUEST" || typeof message !== "string") return undefined;
  return /^([A-Za-z][A-Za-z0-9]*):/.exec(message)?.[1];
}

/** An INVALID_REQUEST about `field`; the message starts with the field's name. */
export function invalidRequest(field, message, options = undefined) {
  return new SdError(`${field}: ${message}`, "INVALID_REQUEST", { ...options, field });
}

/** The error for a cancelled operation; `what` names it ("Loading the model", "Generation"). */
export function abortedError(what = "The operation") {
  return new SdError(`${what} was cancelled.`, "ABORTED");
}

export function throwIfAborted(signal, what) {
  if (signal?.aborted) throw abortedError(what);
}

export function disposedError() {
  return new SdError("This model has been disposed: load it again to generate.", "DISPOSED");
}

/** True for a storage quota error, however the browser spells it. */
export function isQuotaError(error) {
  if (error instanceof SdError) return error.code === "QUOTA";
  const name = error?.name;
  // 22 is the legacy DOMException code of QuotaExceededError; Firefox once used its own name.
  return name === "QuotaExceededError" || name === "NS_ERROR_DOM_QUOTA_REACHED" || error?.code === 22;
}

function messageOf(value) {
  if (typeof value === "string") return value;
  if (typeof value?.message === "string" && value.message) return value.message;
  try {
    return String(value);
  } catch {
    return "unknown error";
  }
}

// Chrome: "Failed to fetch"; Firefox: "NetworkError when attempting to fetch resource.";
// Safari: "Load failed" or "The network connection was lost."
const FETCH_FAILURE = /fetch|network|load failed|connection/i;

/**
 * Turns any thrown value into an SdError whose message a person understands.
 * `context.url` says that the value came from fetching that URL (so a TypeError is a network
 * failure); `context.what` names the operation for cancellations.
 * @returns {SdError}
 */
export function toSdError(value, context = {}) {
  if (value instanceof SdError) return value;
  const { url, what } = context;
  const message = messageOf(value);
  const name = value?.name;
  const cause = { cause: value };
  // Errors from the wasm module carry a string code (DOMExceptions carry a numeric one), and
  // request errors may name their field.
  if (typeof value?.code === "string" && KNOWN_CODES.has(value.code)) {
    const field = typeof value.field === "string" && value.field ? value.field : undefined;
    return new SdError(message, value.code, { ...cause, field });
  }
  if (name === "AbortError") return new SdError(abortedError(what).message, "ABORTED", cause);
  if (name === "TimeoutError") return new SdError(`${what ?? "The operation"} timed out.`, "ABORTED", cause);
  if (isQuotaError(value)) {
    return new SdError(
      "Browser storage is full: free some space (or clear this site's data) to cache models.",
      "QUOTA",
      cause,
    );
  }
  if (name === "TypeError" && (url || FETCH_FAILURE.test(message))) {
    const where = url ? `Could not download ${url}` : "A download failed";
    return new SdError(
      `${where}: the request did not reach the server or was refused ` +
        `(offline, server down, or blocked by CORS). Browser said: ${message}`,
      "NETWORK",
      cause,
    );
  }
  if (name === "RangeError" && /memory|allocation/i.test(message)) {
    return new SdError(
      `Out of memory: ${message}. Close other tabs, or generate fewer or smaller images.`,
      "OUT_OF_MEMORY",
      cause,
    );
  }
  if (name === "CompileError" || name === "LinkError") {
    return new SdError(`The WebAssembly module could not be loaded: ${message}`, "INTERNAL", cause);
  }
  if (name === "RuntimeError") {
    return new SdError(`The WebAssembly module crashed (${message}): load the model again.`, "INTERNAL", cause);
  }
  const prefix = name && name !== "Error" ? `${name}: ` : "";
  return new SdError(`Internal error: ${prefix}${message}`, "INTERNAL", cause);
}

/** The structured-cloneable form of an error, for postMessage. */
export function serializeError(error) {
  const { name, code, message, field } = toSdError(error);
  return field ? { name, code, message, field } : { name, code, message };
}

/** The SdError back from its serialised form. */
export function deserializeError(data) {
  const message = typeof data?.message === "string" ? data.message : "Unknown error in the worker.";
  const field = typeof data?.field === "string" && data.field ? data.field : undefined;
  return new SdError(message, data?.code, { field });
}

/** Calls a user callback; an exception in it is reported, never allowed to break a load or generation. */
export function callSafely(callback, value) {
  if (typeof callback !== "function") return;
  try {
    callback(value);
  } catch (error) {
    if (typeof globalThis.reportError === "function") globalThis.reportError(error);
    else console.error(error);
  }
}
