// sd-wgsl: Stable Diffusion in the browser on WebGPU. The public API.
// By default the pipeline runs in a module worker (worker.js) and this file proxies calls to it;
// with { worker: false } the engine runs on this thread.

import * as cache from "./cache.js";
import {
  SdError,
  abortedError,
  callSafely,
  deserializeError,
  disposedError,
  toSdError,
} from "./errors.js";
import { prepareImages } from "./images.js";
export { MAX_IMAGE_SIDE, imageHeaderSize } from "./images.js";

export { SdError };

const LOADING = "Loading the model";
/** Where a model runs (the `device` load option; engine.js chooseDevice acts on it). */
const DEVICES = ["auto", "webgpu", "cpu"];
const GENERATION = "Generation";
const DISPOSE_GRACE_MS = 5000; // then the worker is terminated anyway, which frees its GPU memory too

/** True when this context has WebGPU and a GPU adapter. Never rejects. */
export async function isWebGPUAvailable() {
  try {
    return Boolean(await globalThis.navigator?.gpu?.requestAdapter());
  } catch {
    return false;
  }
}

/** The models in the browser cache, newest first. */
export async function listCachedModels() {
  try {
    return await cache.listCachedModels();
  } catch (error) {
    throw toSdError(error);
  }
}

/** Removes a model from the browser cache; shards another cached model uses stay. */
export async function deleteCachedModel(url) {
  const key = resolveUrl(url);
  try {
    await cache.deleteCachedModel(key);
  } catch (error) {
    throw toSdError(error);
  }
}

// Relative URLs resolve like fetch() resolves them here: against the document's base URL.
// The worker's own base URL differs, so it only ever receives absolute ones.
function resolveUrl(url) {
  const base = globalThis.document?.baseURI ?? globalThis.location?.href;
  try {
    return new URL(String(url), base).href;
  } catch {
    throw new SdError(`manifestUrl: not a valid URL: ${String(url)}`, "INVALID_REQUEST");
  }
}

// ───────────────────────── the worker proxy ─────────────────────────

function startWorker() {
  try {
    // Written out in full so bundlers recognise the worker and emit it.
    return new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  } catch (error) {
    if (error?.name !== "SecurityError") throw error;
    // The package is served from another origin (a CDN): a same-origin blob worker can import it.
    const source = `import ${JSON.stringify(new URL("./worker.js", import.meta.url).href)};`;
    return new Worker(URL.createObjectURL(new Blob([source], { type: "text/javascript" })), { type: "module" });
  }
}

// A script that fails to load gives a bare Event; an uncaught exception an ErrorEvent with a message.
function workerFailure(event) {
  if (!event?.message) {
    return new SdError(
      "The sd-wgsl worker failed to start: check that worker.js, engine.js and wasm/ are served next to " +
        "index.js (or pass { worker: false } to run on the page).",
      "INTERNAL",
    );
  }
  const where = event.filename ? ` (${event.filename}:${event.lineno})` : "";
  return new SdError(`The sd-wgsl worker crashed: ${event.message}${where}. Load the model again.`, "INTERNAL");
}

/** Request/reply over postMessage; every call settles, also when the worker dies. */
class WorkerClient {
  #worker;
  #pending = new Map(); // id -> { resolve, reject, onProgress, cleanup }
  #nextId = 0;
  #closed = null; // the error later calls reject with, once the worker is gone

  constructor() {
    try {
      this.#worker = startWorker();
    } catch (error) {
      throw new SdError(
        `Could not start the sd-wgsl worker (${error?.message ?? error}). { worker: false } runs on the page instead.`,
        "INTERNAL",
        { cause: error },
      );
    }
    this.#worker.addEventListener("message", ({ data }) => this.#receive(data ?? {}));
    this.#worker.addEventListener("error", (event) => this.close(workerFailure(event)));
    this.#worker.addEventListener("messageerror", () =>
      this.close(new SdError("A message from the sd-wgsl worker could not be read.", "INTERNAL")),
    );
  }

  /** Sends a request; `signal` cancels it (the promise rejects with ABORTED at once). */
  call(type, payload, { onProgress, signal, what } = {}) {
    if (this.#closed) return Promise.reject(this.#closed);
    if (signal?.aborted) return Promise.reject(abortedError(what));
    const id = ++this.#nextId;
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.#settle(id);
        this.#worker.postMessage({ id, type: "cancel" });
        reject(abortedError(what));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      const cleanup = () => signal?.removeEventListener("abort", onAbort);
      this.#pending.set(id, { resolve, reject, onProgress, cleanup });
      try {
        this.#worker.postMessage({ ...payload, id, type });
      } catch (error) {
        this.#settle(id);
        reject(unsendable(error));
      }
    });
  }

  #settle(id) {
    const entry = this.#pending.get(id);
    this.#pending.delete(id);
    entry?.cleanup();
    return entry;
  }

  #receive({ id, type, progress, value, error }) {
    if (type === "progress") {
      callSafely(this.#pending.get(id)?.onProgress, progress);
      return;
    }
    const entry = this.#settle(id); // absent when the caller cancelled
    if (type === "result") entry?.resolve(value);
    else entry?.reject(deserializeError(error));
  }

  /** Terminates the worker; pending and later calls reject with `error`. */
  close(error = disposedError()) {
    this.#closed ??= error;
    this.#worker.terminate();
    for (const id of [...this.#pending.keys()]) this.#settle(id).reject(this.#closed);
  }
}

function unsendable(error) {
  if (error?.name !== "DataCloneError") return toSdError(error);
  return new SdError(`request: cannot be sent to the worker (${error.message})`, "INVALID_REQUEST", { cause: error });
}

function workerBackend(client) {
  // Requests are posted in call order (the worker runs them in arrival order), also when one
  // waits here for its images to be fetched or read.
  let posted = Promise.resolve();
  return {
    generate(request, { onProgress, signal }) {
      const ready = posted.then(() => prepareImages(request, signal));
      // Wrapped, so that `sent` settles when the message is posted, not when the call ends.
      const sent = ready.then((prepared) => ({
        reply: client.call("generate", { request: prepared }, { onProgress, signal, what: GENERATION }),
      }));
      posted = sent.then(
        () => {},
        () => {},
      );
      return sent.then(({ reply }) => reply);
    },
    async dispose() {
      let timer;
      const grace = new Promise((resolve) => {
        timer = setTimeout(resolve, DISPOSE_GRACE_MS);
      });
      await Promise.race([client.call("dispose", {}).catch(() => {}), grace]);
      clearTimeout(timer);
      client.close();
    },
  };
}

async function loadInWorker(manifestUrl, { onProgress, signal, cache: useCache, device }) {
  const client = new WorkerClient();
  try {
    const info = await client.call("load", { manifestUrl, cache: useCache, device }, { onProgress, signal, what: LOADING });
    return { backend: workerBackend(client), info };
  } catch (error) {
    client.close(); // a failed or cancelled load leaves nothing worth keeping in the worker
    throw error;
  }
}

async function loadHere(manifestUrl, options) {
  let Engine;
  try {
    ({ Engine } = await import("./engine.js"));
  } catch (error) {
    throw new SdError(`Could not load the sd-wgsl engine: ${error?.message ?? error}`, "INTERNAL", { cause: error });
  }
  const engine = await Engine.load(manifestUrl, options);
  return { backend: engine, info: engine.info };
}

// ───────────────────────── the public class ─────────────────────────

const INTERNAL = Symbol("StableDiffusion.internal");

export class StableDiffusion {
  #backend;
  #info;
  #disposed = null;

  /** @private Use StableDiffusion.load(). */
  constructor(token, backend, info) {
    if (token !== INTERNAL) throw new TypeError("Use StableDiffusion.load(manifestUrl) to create a StableDiffusion.");
    this.#backend = backend;
    this.#info = Object.freeze({ ...info });
  }

  /**
   * Downloads (or reads from the cache), verifies and uploads a web model, on WebGPU or, where the
   * browser has no WebGPU adapter (or with `device: "cpu"`), on the CPU module.
   */
  static async load(manifestUrl, { onProgress, signal, worker = true, cache: useCache = true, device = "auto" } = {}) {
    if (signal?.aborted) throw abortedError(LOADING);
    if (!DEVICES.includes(device)) {
      throw new SdError(`device: must be one of ${DEVICES.join(", ")}, not ${JSON.stringify(device)}`, "INVALID_REQUEST", {
        field: "device",
      });
    }
    const url = resolveUrl(manifestUrl);
    const options = { onProgress, signal, cache: Boolean(useCache), device };
    try {
      const { backend, info } = worker ? await loadInWorker(url, options) : await loadHere(url, options);
      return new StableDiffusion(INTERNAL, backend, info);
    } catch (error) {
      throw signal?.aborted ? abortedError(LOADING) : toSdError(error, { what: LOADING });
    }
  }

  /**
   * Model name, native size, device ("webgpu" or "cpu") and adapter, samplers, manifestUrl, and
   * whether it is fully cached.
   */
  get info() {
    return this.#info;
  }

  /** Generates images; calls on one model run one at a time, in order. */
  async generate(request, { onProgress, signal } = {}) {
    if (this.#disposed) throw disposedError();
    if (signal?.aborted) throw abortedError(GENERATION);
    try {
      return await this.#backend.generate(request, { onProgress, signal });
    } catch (error) {
      throw toSdError(error, { what: GENERATION });
    }
  }

  /** Frees the model's GPU memory (and ends its worker). Later generate calls reject with DISPOSED. */
  dispose() {
    this.#disposed ??= this.#backend.dispose().catch(() => {});
    return this.#disposed;
  }
}
