// The engine: runs where the wasm runs (the module worker, or the page with { worker: false }).
// Downloads, verifies and caches a web model, uploads it through the wasm module, and runs one
// generation at a time.

import * as cache from "./cache.js";
import { checkImages, decodeImages } from "./images.js";
import {
  SdError,
  abortedError,
  callSafely,
  disposedError,
  throwIfAborted,
  toSdError,
} from "./errors.js";

const DOWNLOAD_CONCURRENCY = 4;
const PROGRESS_INTERVAL_MS = 100; // download progress at most this often: a shard is thousands of chunks
const QUOTA_WARNING = "browser storage is full: the model runs but will download again next time";
const LOADING = "Loading the model";
const GENERATION = "Generation";

// The two wasm modules: the WebGPU one, and the CPU one (candle's networks, for browsers without
// WebGPU). Each is fetched only when a load picks it, so the WebGPU path downloads nothing more.
const WASM_MODULES = {
  webgpu: () => import("./wasm/sd_web.js"),
  cpu: () => import("./wasm/sd_web_cpu.js"),
};
const wasmReady = {};

// Initialise a wasm module once per context; its .wasm is resolved next to its .js.
function initWasm(device) {
  wasmReady[device] ??= WASM_MODULES[device]()
    .then(async (module) => {
      await module.default();
      return module;
    })
    .catch((error) => {
      wasmReady[device] = null;
      throw new SdError(
        `The ${device === "cpu" ? "CPU " : ""}WebAssembly module could not be loaded: ${error?.message ?? error}`,
        "INTERNAL",
        { cause: error },
      );
    });
  return wasmReady[device];
}

/**
 * The module a load uses: `webgpu` needs a WebGPU adapter (else NO_WEBGPU), `cpu` needs nothing,
 * and `auto` takes WebGPU when the browser gives an adapter (a fallback one too), else the CPU.
 */
async function chooseDevice(device) {
  // index.js has checked the value.
  if (device === "cpu") return "cpu";
  if (device === "webgpu") {
    await requireWebGPU();
    return "webgpu";
  }
  try {
    await requireWebGPU();
    return "webgpu";
  } catch (error) {
    if (error?.code === "NO_WEBGPU") return "cpu";
    throw error;
  }
}

async function requireWebGPU() {
  const gpu = globalThis.navigator?.gpu;
  if (!gpu) throw new SdError(noWebGPUMessage(), "NO_WEBGPU");
  let adapter = null;
  try {
    adapter = await gpu.requestAdapter();
  } catch {
    // treated as no adapter
  }
  if (!adapter) {
    throw new SdError(
      "WebGPU is present but no GPU adapter is available: the GPU may be blocklisted or hardware " +
        "acceleration turned off (chrome://gpu says which). Turn on hardware acceleration, update the " +
        "graphics driver, or try another browser.",
      "NO_WEBGPU",
    );
  }
}

function noWebGPUMessage() {
  if (globalThis.isSecureContext === false) {
    return "WebGPU needs a secure context: serve the page over https:// or from localhost / 127.0.0.1.";
  }
  const inWorker = typeof globalThis.WorkerGlobalScope === "function";
  return (
    "This browser has no WebGPU: use Chrome or Edge 113+ (desktop), Chrome 121+ on Android, or " +
    "Safari 26+, or enable it (Firefox: dom.webgpu.enabled in about:config; Safari: Develop > " +
    "Feature Flags > WebGPU)." +
    (inWorker ? " If the page itself has WebGPU, load with { worker: false }." : "")
  );
}

async function sha256Hex(bytes) {
  if (!globalThis.crypto?.subtle) {
    throw new SdError("crypto.subtle is unavailable: serve the page over https:// or from localhost.", "INTERNAL");
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ───────────────────────── abort helpers ─────────────────────────

/**
 * Settles like `promise`, but rejects with ABORTED as soon as `signal` aborts. A value that
 * arrives after that goes to `onLateValue` (to free it).
 */
function untilAbort(promise, signal, what, onLateValue) {
  if (!signal) return promise;
  return new Promise((resolve, reject) => {
    let aborted = false;
    const onAbort = () => {
      aborted = true;
      reject(abortedError(what));
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        if (aborted) onLateValue?.(value);
        else resolve(value);
      },
      (error) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

/** A controller that aborts when any of `signals` does (AbortSignal.any is too new to rely on). */
function linkedController(...signals) {
  const controller = new AbortController();
  const abort = () => controller.abort();
  const live = signals.filter(Boolean);
  for (const signal of live) {
    if (signal.aborted) abort();
    else signal.addEventListener("abort", abort, { once: true });
  }
  controller.unlink = () => live.forEach((signal) => signal.removeEventListener("abort", abort));
  return controller;
}

// ───────────────────────── fetching ─────────────────────────

async function fetchOk(url, { signal, cacheMode, onNotFound }) {
  let response;
  try {
    response = await fetch(url, { signal, cache: cacheMode });
  } catch (error) {
    throw fetchFailure(error, url, signal);
  }
  if (response.ok) return response;
  if (onNotFound && (response.status === 404 || response.status === 410)) throw onNotFound();
  const status = `${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
  throw new SdError(`Could not download ${url}: the server answered HTTP ${status}.`, "NETWORK");
}

function fetchFailure(error, url, signal) {
  if (signal?.aborted) return abortedError(LOADING);
  return toSdError(error, { url, what: LOADING });
}

async function fetchManifest(url, signal) {
  const response = await fetchOk(url, {
    signal,
    cacheMode: "no-cache", // shards are immutable by name, the manifest is not: revalidate it
    onNotFound: () =>
      new SdError(
        `No model at ${url} (HTTP 404). Check the URL; a model is converted for the web with ` +
          "`sd convert --web <diffusers folder> <out folder>`.",
        "MODEL_NOT_FOUND",
      ),
  });
  try {
    return await response.text();
  } catch (error) {
    throw fetchFailure(error, url, signal);
  }
}

function parse(wasm, text, url) {
  try {
    return wasm.parseManifest(text);
  } catch (error) {
    const hint = text.trimStart().startsWith("<") ? " (the server sent HTML: is the URL right?)" : "";
    throw new SdError(
      `${url} is not a valid sd-wgsl web model manifest${hint}: ${error?.message ?? error}`,
      "MODEL_INVALID",
      { cause: error },
    );
  }
}

/** Downloads a shard into a buffer of its manifest size, counting bytes as they arrive. */
async function download(url, shard, signal, onBytes) {
  const response = await fetchOk(url, {
    signal,
    onNotFound: () =>
      new SdError(
        `The manifest lists shard ${shard.file} (${shard.component}) but ${url} does not exist (HTTP 404): ` +
          "the model folder is incomplete.",
        "MODEL_INVALID",
      ),
  });
  // A server that says another length fails before the shard's buffer is allocated (without a
  // Content-Encoding, Content-Length is the file's size).
  const declared = response.headers.get("Content-Length");
  if (declared !== null && !response.headers.get("Content-Encoding") && Number(declared) !== shard.size) {
    response.body?.cancel().catch(() => {});
    throw sizeMismatch(shard, url, Number(declared) > shard.size ? "more" : "fewer");
  }
  const bytes = new Uint8Array(shard.size);
  let length = 0;
  const take = (chunk) => {
    if (length + chunk.byteLength > bytes.byteLength) throw sizeMismatch(shard, url, "more");
    bytes.set(chunk, length);
    length += chunk.byteLength;
    onBytes(chunk.byteLength);
  };
  try {
    if (response.body) await readStream(response.body, take);
    else take(new Uint8Array(await response.arrayBuffer()));
  } catch (error) {
    throw error instanceof SdError ? error : fetchFailure(error, url, signal);
  }
  if (length !== bytes.byteLength) throw sizeMismatch(shard, url, "fewer");
  return bytes;
}

async function readStream(stream, take) {
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      take(value);
    }
  } catch (error) {
    reader.cancel().catch(() => {}); // stop the download; the error below is what matters
    throw error;
  }
}

function sizeMismatch(shard, url, moreOrFewer) {
  return new SdError(
    `Shard ${shard.file} (${shard.component}) from ${url} has ${moreOrFewer} bytes than the manifest's ` +
      `${shard.size}: the file on the server does not match the manifest.`,
    "INTEGRITY",
  );
}

// ───────────────────────── loading ─────────────────────────

/** LoadProgress as the contract defines it; silent once the load has settled. */
class LoadReporter {
  loadedBytes = 0;
  totalBytes = 0;
  shardsDone = 0;
  shardsTotal = 0;
  fromCache = 0;
  warning = undefined; // sticky: every later report carries it
  #onProgress;
  #lastDownloadReport = -Infinity;
  #closed = false;

  constructor(onProgress) {
    this.#onProgress = onProgress;
  }

  report(phase, component) {
    if (this.#closed || !this.#onProgress) return;
    const { loadedBytes, totalBytes, shardsDone, shardsTotal, fromCache, warning } = this;
    const progress = { phase, loadedBytes, totalBytes, shardsDone, shardsTotal, fromCache };
    if (component) progress.component = component;
    if (warning) progress.warning = warning;
    callSafely(this.#onProgress, progress);
  }

  downloaded(byteCount, component) {
    this.loadedBytes += byteCount;
    const now = performance.now();
    if (now - this.#lastDownloadReport < PROGRESS_INTERVAL_MS) return;
    this.#lastDownloadReport = now;
    this.report("download", component);
  }

  shardDone(shard, { fromCache }) {
    this.shardsDone += 1;
    if (fromCache) {
      this.fromCache += 1;
      this.loadedBytes += shard.size;
    }
    this.report("verify", shard.component);
  }

  warn(message) {
    this.warning = message;
  }

  close() {
    this.#closed = true;
  }
}

/** Cache policy of one load: reads, writes until the first failure, and whether all shards got in. */
class LoadCache {
  reading;
  writing;
  complete; // every shard is in the cache (read from it or stored)
  reporter;

  constructor(enabled, reporter) {
    this.reading = this.writing = this.complete = enabled;
    this.reporter = reporter;
  }

  async read(shard) {
    if (!this.reading) return null;
    let data = null;
    try {
      data = await cache.getShard(shard.sha256);
    } catch {
      // an unreadable entry is a miss; the download overwrites it
    }
    if (!data) return null;
    this.reporter.report("verify", shard.component);
    const bytes = new Uint8Array(data);
    if (bytes.byteLength === shard.size && (await sha256Hex(bytes)) === shard.sha256) return bytes;
    await cache.deleteShard(shard.sha256).catch(() => {});
    return null;
  }

  async write(shard, bytes) {
    if (!this.writing) {
      this.complete = false;
      return;
    }
    try {
      if (!(await cache.putShard(shard.sha256, bytes))) this.#stop();
    } catch (error) {
      this.#stop(error);
    }
  }

  async recordModel(model) {
    if (!this.complete) return false;
    try {
      return await cache.putModel(model);
    } catch (error) {
      this.#stop(error);
      return false;
    }
  }

  // Stop caching for the rest of this load and keep going uncached.
  #stop(error) {
    this.writing = this.complete = false;
    if (!error) return;
    this.reporter.warn(
      error.code === "QUOTA"
        ? QUOTA_WARNING
        : `the model could not be cached (${error.message}): it runs but will download again next time`,
    );
  }
}

async function obtainShard(shard, { manifestUrl, signal, reporter, store }) {
  const expected = shard.sha256.toLowerCase();
  const cached = await store.read({ ...shard, sha256: expected });
  if (cached) {
    reporter.shardDone(shard, { fromCache: true });
    return cached;
  }
  throwIfAborted(signal, LOADING);
  const url = new URL(shard.file, manifestUrl).href;
  const bytes = await download(url, shard, signal, (n) => reporter.downloaded(n, shard.component));
  reporter.report("verify", shard.component);
  if ((await sha256Hex(bytes)) !== expected) {
    throw new SdError(
      `Shard ${shard.file} (${shard.component}) downloaded from ${url} failed its SHA-256 check: ` +
        "the file on the server does not match the manifest (convert or upload the model again).",
      "INTEGRITY",
    );
  }
  throwIfAborted(signal, LOADING);
  await store.write({ ...shard, sha256: expected }, bytes);
  reporter.shardDone(shard, { fromCache: false });
  return bytes;
}

/** Maps `items` through `task` with at most `limit` running at once; stops starting new ones on abort. */
async function mapConcurrent(items, limit, signal, task) {
  const results = new Array(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length && !signal.aborted) {
      const index = next++;
      results[index] = await task(items[index]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  throwIfAborted(signal, LOADING);
  return results;
}

async function fetchShards(manifest, context) {
  // One failure cancels the sibling downloads.
  const controller = linkedController(context.signal);
  try {
    return await mapConcurrent(manifest.shards, DOWNLOAD_CONCURRENCY, controller.signal, (shard) =>
      obtainShard(shard, { ...context, signal: controller.signal }),
    );
  } catch (error) {
    controller.abort();
    throw context.signal?.aborted ? abortedError(LOADING) : error;
  } finally {
    controller.unlink();
  }
}

function freeModel(model) {
  try {
    model.dispose();
  } catch {
    // a lost device has nothing left to free
  } finally {
    model.free();
  }
}

// ───────────────────────── generation ─────────────────────────

/** Runs tasks one after another; a task whose caller gave up before its turn never starts. */
class TaskQueue {
  #tail = Promise.resolve();

  run(task, signal, what) {
    const job = this.#tail.then(() => {
      throwIfAborted(signal, what);
      return task();
    });
    this.#tail = job.then(
      () => {},
      () => {},
    );
    return untilAbort(job, signal, what);
  }

  /** Resolves once every task queued so far has settled. */
  idle() {
    return this.#tail;
  }
}

function hasTag(value, tag) {
  return Object.prototype.toString.call(value) === `[object ${tag}]`;
}

// The wasm takes the parameters as JSON, the latents as a separate typed array and the images
// (`initImage`, `mask`) as { width, height, data } objects; `strength` is one of the parameters.
function splitRequest(request) {
  if (request === null || typeof request !== "object" || Array.isArray(request)) {
    throw new SdError('request: must be an object such as { prompt: "a red digit seven" }', "INVALID_REQUEST");
  }
  const { initialLatents, initImage, mask, ...params } = request;
  if (initialLatents !== undefined && !hasTag(initialLatents, "Float32Array")) {
    throw new SdError("initialLatents: must be a Float32Array", "INVALID_REQUEST");
  }
  const images = checkImages({ initImage, mask });
  try {
    return { params: JSON.stringify(params), latents: initialLatents, images };
  } catch (error) {
    throw new SdError(`request: cannot be serialised to JSON (${error.message})`, "INVALID_REQUEST");
  }
}

function toImageData({ width, height, rgba }) {
  const data = hasTag(rgba, "Uint8ClampedArray")
    ? rgba
    : new Uint8ClampedArray(rgba.buffer, rgba.byteOffset, rgba.byteLength);
  return new ImageData(data, width, height);
}

function progressAdapter(onProgress) {
  if (typeof onProgress !== "function") return undefined;
  return (progress) =>
    callSafely(onProgress, progress.preview ? { ...progress, preview: toImageData(progress.preview) } : progress);
}

function toGeneratedImages({ images, params, warnings }) {
  for (const warning of warnings ?? []) console.warn(`sd-wgsl: ${warning}`);
  return images.map((image) => ({
    imageData: toImageData(image),
    blob: new Blob([image.png], { type: "image/png" }),
    seed: image.seed,
    width: image.width,
    height: image.height,
    params: { ...params, seed: image.seed },
  }));
}

// ───────────────────────── the engine ─────────────────────────

export class Engine {
  /** Model facts plus `manifestUrl` and `cached` (every shard is in the browser cache). */
  info;
  #model;
  #queue = new TaskQueue();
  #disposing = new AbortController();
  #disposed = null;

  constructor(model, info) {
    this.#model = model;
    this.info = Object.freeze(info);
  }

  /**
   * Loads a web model on the device `device` picks ("auto", "webgpu" or "cpu"; see chooseDevice).
   * Rejects with an SdError: NO_WEBGPU, MODEL_NOT_FOUND, MODEL_INVALID, NETWORK,
   * INTEGRITY, ABORTED, OUT_OF_MEMORY, DEVICE_LOST or INTERNAL.
   * @param {string | URL} manifestUrl
   * @param {{ onProgress?: Function, signal?: AbortSignal, cache?: boolean }} [options]
   */
  static async load(manifestUrl, { onProgress, signal, cache: useCache = true, device = "auto" } = {}) {
    const reporter = new LoadReporter(onProgress);
    try {
      return await loadEngine(absoluteUrl(manifestUrl), { reporter, signal, useCache: Boolean(useCache), device });
    } catch (error) {
      throw signal?.aborted ? abortedError(LOADING) : toSdError(error, { what: LOADING });
    } finally {
      reporter.close();
    }
  }

  /**
   * Generates images. Waits for earlier generations of this engine to finish first.
   * @returns {Promise<object[]>} GeneratedImage objects
   */
  generate(request, { onProgress, signal } = {}) {
    if (this.#disposed) return Promise.reject(disposedError());
    if (signal?.aborted) return Promise.reject(abortedError(GENERATION));
    let parts;
    try {
      parts = splitRequest(request);
    } catch (error) {
      return Promise.reject(error);
    }
    // Images are decoded at once, while earlier generations run; a bad one rejects without
    // waiting for its turn. The turn in the queue is taken now, so calls still run in order.
    const inputs = decodeImages(parts.images, signal);
    inputs.catch(() => {}); // observed below
    const job = this.#queue.run(
      async () => this.#generate(parts, await inputs, onProgress, signal),
      signal,
      GENERATION,
    );
    return Promise.race([job, inputs.then(() => job)]);
  }

  async #generate({ params, latents }, inputs, onProgress, signal) {
    if (this.#disposed) throw disposedError();
    const controller = linkedController(signal, this.#disposing.signal);
    try {
      const result = await this.#model.generate(
        params,
        latents,
        inputs,
        controller.signal,
        progressAdapter(onProgress),
      );
      return toGeneratedImages(result);
    } catch (error) {
      if (this.#disposed) throw disposedError();
      if (signal?.aborted) throw abortedError(GENERATION);
      throw toSdError(error, { what: GENERATION });
    } finally {
      controller.unlink();
    }
  }

  /** Cancels the running generation, rejects queued ones with DISPOSED and frees GPU memory. */
  dispose() {
    this.#disposed ??= this.#dispose();
    return this.#disposed;
  }

  async #dispose() {
    this.#disposing.abort();
    await this.#queue.idle(); // the wasm model must not be freed while a generation uses it
    freeModel(this.#model);
  }
}

function absoluteUrl(url) {
  const base = globalThis.document?.baseURI ?? globalThis.location?.href;
  try {
    return new URL(String(url), base).href;
  } catch {
    throw new SdError(`manifestUrl: not a valid URL: ${String(url)}`, "INVALID_REQUEST");
  }
}

async function loadEngine(manifestUrl, { reporter, signal, useCache, device }) {
  const chosen = await untilAbort(chooseDevice(device), signal, LOADING);
  const wasm = await untilAbort(initWasm(chosen), signal, LOADING);

  reporter.report("manifest");
  const text = await fetchManifest(manifestUrl, signal);
  const manifest = parse(wasm, text, manifestUrl);
  reporter.totalBytes = manifest.totalBytes;
  reporter.shardsTotal = manifest.shards.length;

  const store = new LoadCache(useCache && (await cacheUsable(reporter)), reporter);
  const shards = await fetchShards(manifest, { manifestUrl, signal, reporter, store });
  // Recorded before the upload, so shards stored by a load that then fails stay listed (and deletable).
  const cached = await store.recordModel({
    url: manifestUrl,
    name: manifest.name,
    shards: manifest.shards.map((shard) => shard.sha256.toLowerCase()),
    bytes: manifest.totalBytes,
  });

  reporter.loadedBytes = manifest.totalBytes;
  reporter.report("upload");
  const files = new Map(manifest.shards.map((shard, i) => [shard.file, shards[i]]));
  const onUpload = (component) => reporter.report("upload", component);
  const model = await untilAbort(wasm.WasmModel.load(text, files, onUpload), signal, LOADING, freeModel);

  const engine = new Engine(model, { ...model.info(), manifestUrl, cached });
  reporter.report("ready");
  return engine;
}

async function cacheUsable(reporter) {
  if (await cache.open()) return true;
  reporter.warn("browser storage (IndexedDB) is unavailable: the model runs but will download again next time");
  return false;
}
