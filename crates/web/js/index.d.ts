// Type declarations of sd-wgsl: Stable Diffusion in the browser on WebGPU.

/**
 * What went wrong, as a stable string:
 * - `NO_WEBGPU`: the browser (or the worker) has no WebGPU, or no GPU adapter.
 * - `MODEL_NOT_FOUND`: the manifest URL answered 404.
 * - `MODEL_INVALID`: the manifest is not a valid sd-wgsl web model, or a shard it lists is missing.
 * - `NETWORK`: a download failed (offline, server error, CORS).
 * - `INTEGRITY`: a downloaded shard's size or SHA-256 differs from the manifest.
 * - `QUOTA`: browser storage is full (loads only warn about it and go on uncached).
 * - `INVALID_REQUEST`: a generation parameter is out of range, or an input image cannot be read;
 *   the message names the field, and so does `SdError.field`.
 * - `DEVICE_LOST`: the GPU device was lost (driver reset, tab in background for long): load again.
 * - `OUT_OF_MEMORY`: GPU or WebAssembly memory ran out.
 * - `ABORTED`: the caller's AbortSignal fired.
 * - `DISPOSED`: the model was disposed.
 * - `INTERNAL`: a bug, or the worker or WebAssembly module failed to start.
 */
export type ErrorCode =
  | "NO_WEBGPU"
  | "MODEL_NOT_FOUND"
  | "MODEL_INVALID"
  | "NETWORK"
  | "INTEGRITY"
  | "QUOTA"
  | "INVALID_REQUEST"
  | "DEVICE_LOST"
  | "OUT_OF_MEMORY"
  | "ABORTED"
  | "DISPOSED"
  | "INTERNAL";

/** The one error type every promise of this package rejects with. */
export class SdError extends Error {
  /**
   * @param message what happened, for a person
   * @param code defaults to `"INTERNAL"`; an unknown code also becomes `"INTERNAL"`
   */
  constructor(message: string, code?: ErrorCode, options?: { cause?: unknown; field?: string });
  readonly name: "SdError";
  readonly code: ErrorCode;
  /**
   * For `INVALID_REQUEST` (and a failed download of an input image): the request field it is
   * about, camelCase as in the request (`"width"`, `"steps"`, `"strength"`, `"initImage"`,
   * `"mask"`, ...). The message starts with the same name.
   */
  readonly field?: string;
}

/**
 * Whether this context has WebGPU with a usable GPU adapter (it asks for one). Never rejects.
 * Check this before `StableDiffusion.load` to show a friendly page instead of an error.
 */
export function isWebGPUAvailable(): Promise<boolean>;

/** The widest and tallest input image (`initImage`, `mask`) a generation reads: 4096. */
export const MAX_IMAGE_SIDE: number;

/**
 * The size an encoded image (PNG, JPEG, WebP, GIF or BMP) declares in its header, read without
 * decoding it, or null when the header does not say. Generations check it against
 * `MAX_IMAGE_SIDE` before decoding a Blob; a page can do the same before it shows one.
 */
export function imageHeaderSize(
  blob: Blob,
): Promise<{ width: number; height: number; format: "png" | "jpeg" | "webp" | "gif" | "bmp" } | null>;

/** Progress of `StableDiffusion.load`. Download reports come at most every 100 ms. */
export interface LoadProgress {
  /**
   * `manifest`: fetching manifest.json; `download`: shard bytes arriving; `verify`: checking a
   * shard's SHA-256 (reported again, with `shardsDone` counted, once it is done); `upload`: moving
   * weights to the GPU (`component` says which); `ready`: the model is usable.
   */
  phase: "manifest" | "download" | "verify" | "upload" | "ready";
  /** Bytes of weights in hand: downloaded so far plus shards read from the cache. */
  loadedBytes: number;
  /** Bytes of all shards (0 until the manifest is read). */
  totalBytes: number;
  /** Shards downloaded or read from the cache, and verified. */
  shardsDone: number;
  shardsTotal: number;
  /** Shards read from the browser cache so far. */
  fromCache: number;
  /** The model component (`text_encoder`, `unet`, `vae`) being downloaded, verified or uploaded. */
  component?: string;
  /**
   * Set (and kept on every later report) when caching stopped, e.g. "browser storage is full: the
   * model runs but will download again next time". The load goes on.
   */
  warning?: string;
}

export interface LoadOptions {
  /** Called with each progress report. An exception it throws is reported, not propagated. */
  onProgress?: (progress: LoadProgress) => void;
  /** Cancels the load; the promise then rejects with `ABORTED` and downloads stop. */
  signal?: AbortSignal;
  /**
   * Default `true`: the pipeline runs in a module Web Worker, so the page stays responsive.
   * `false` runs it on the calling thread (for browsers with WebGPU only on the main thread).
   */
  worker?: boolean;
  /**
   * Default `true`: shards are read from and stored in IndexedDB (database "sd-wgsl"), so the next
   * load downloads nothing. `false` neither reads nor writes the cache.
   */
  cache?: boolean;
  /**
   * Where the model runs. Default `"auto"`: WebGPU when the browser gives a GPU adapter (a
   * fallback one too), otherwise the CPU module (`wasm/sd_web_cpu*`, fetched only then: the same
   * API and progress, much slower). `"webgpu"` rejects with `NO_WEBGPU` without an adapter;
   * `"cpu"` never touches WebGPU. `info.device` says which one ran.
   */
  device?: "auto" | "webgpu" | "cpu";
}

/** The generation parameters. Omitted ones take the model's defaults (see `info.defaults`). */
export interface GenerateParams {
  prompt: string;
  /** Default "". */
  negativePrompt?: string;
  /** Denoising steps, 1..150. Default 20. */
  steps?: number;
  /** Classifier-free guidance scale; 1 or less turns guidance off. Default 7.5. */
  guidanceScale?: number;
  /** Default: random. Image i of a batch uses seed + i. */
  seed?: number;
  /**
   * A sampler's name: `euler_a` (default), `euler`, `ddim`, `dpm++2m_karras`, ... (`info.samplers`
   * lists them all).
   */
  sampler?: string;
  /** Multiples of 8 between 64 and 2048. Default: the model's native size. */
  width?: number;
  height?: number;
  /** Images to generate, 1..16. Default 1. */
  count?: number;
  /**
   * With `initImage`: how much of it to change, 0..1. 0 keeps the image, 1 repaints it
   * entirely (the image then only shows through where a `mask` keeps it); in between,
   * generation starts from the image noised to that level and runs `steps * strength` steps.
   * Default 0.8. Ignored without an `initImage`.
   */
  strength?: number;
}

/** Raw pixels: `data` holds `width * height * 4` bytes, RGBA row by row. An `ImageData` is one. */
export interface PixelData {
  readonly width: number;
  readonly height: number;
  readonly data: Uint8ClampedArray | Uint8Array;
}

/**
 * An input image (`initImage`, `mask`). URLs (relative ones resolve against the page) are
 * fetched; encoded images (PNG, JPEG, WebP, whatever the browser decodes) are decoded as stored,
 * without colour management; `<img>` elements must be loaded (or loading) and same-origin or
 * CORS-enabled; canvases are read as they are now. Alpha is ignored for `initImage`.
 */
export type ImageSource =
  | ImageData
  | PixelData
  | Blob
  | File
  | URL
  | string
  | ImageBitmap
  | HTMLImageElement
  | HTMLCanvasElement
  | OffscreenCanvas;

export interface GenerateRequest extends GenerateParams {
  /** Unit-noise starting latents, [count, 4, height / 8, width / 8]; default: noise from the seed. */
  initialLatents?: Float32Array;
  /**
   * img2img: the picture to start from, of any size; it is resized to `width` x `height`. Without
   * `width` and `height` the output takes its size, rounded down to multiples of 8 (64..2048).
   * `strength` says how much of it changes.
   */
  initImage?: ImageSource;
  /**
   * Inpainting (needs `initImage`): white marks what to repaint, black what to keep; grey blends.
   * Read by brightness; transparent parts count as black. Any size (resized to the output's).
   */
  mask?: ImageSource;
}

/** Progress of a generation. */
export interface GenerateProgress {
  stage: "encode" | "diffusion" | "decode" | "done";
  /** Which image of the batch (0-based), and how many there are. */
  image: number;
  count: number;
  /** The step within the stage, of `total`. */
  step: number;
  total: number;
  /** Progress of the whole request, 0..100. */
  percent: number;
  /** On diffusion steps: the current image, at latent resolution (width / 8 by height / 8). */
  preview?: ImageData;
}

export interface GenerateOptions {
  /** Called with each progress report. An exception it throws is reported, not propagated. */
  onProgress?: (progress: GenerateProgress) => void;
  /** Cancels this generation, running or queued; the promise rejects with `ABORTED`. */
  signal?: AbortSignal;
}

export interface GeneratedImage {
  imageData: ImageData;
  /** The image as a PNG whose A1111-style "parameters" text chunk records how it was made. */
  blob: Blob;
  seed: number;
  width: number;
  height: number;
  /**
   * The full normalized request (defaults filled in), with this image's seed; `strength` only
   * when the request had an `initImage`. The images themselves are not repeated here.
   */
  params: Required<Omit<GenerateParams, "strength">> & { strength?: number };
}

export interface ModelInfo {
  readonly name: string;
  /** The size the model was trained at, the default width and height. */
  readonly nativeWidth: number;
  readonly nativeHeight: number;
  /** Where the model runs: `"webgpu"`, or `"cpu"` (the CPU module, when WebGPU is missing). */
  readonly device: "webgpu" | "cpu";
  /** The GPU adapter's description, or the CPU backend's. */
  readonly adapter: string;
  /**
   * Whether the GPU runs f16 shaders natively (otherwise f16 weights are unpacked in f32); false
   * on the CPU, whose networks run in f32.
   */
  readonly shaderF16: boolean;
  readonly samplers: readonly string[];
  /** The default generation parameters. */
  readonly defaults: Readonly<Partial<GenerateParams>>;
  /** The absolute manifest URL. */
  readonly manifestUrl: string;
  /** Whether every shard is now in the browser cache (the next load downloads nothing). */
  readonly cached: boolean;
}

export class StableDiffusion {
  private constructor();

  /**
   * Loads a web model (manifest.json and its shards, as `sd convert --web` writes them): checks
   * for WebGPU, downloads or reads each shard from the cache, verifies its size and SHA-256,
   * caches it, and uploads the weights to the GPU.
   *
   * @param manifestUrl the manifest's URL; a relative one resolves against the page.
   * @throws {SdError} `NO_WEBGPU`, `MODEL_NOT_FOUND`, `MODEL_INVALID`, `NETWORK`, `INTEGRITY`,
   *   `ABORTED`, `OUT_OF_MEMORY`, `DEVICE_LOST`, `INVALID_REQUEST` (a malformed URL), `INTERNAL`.
   */
  static load(manifestUrl: string | URL, options?: LoadOptions): Promise<StableDiffusion>;

  readonly info: ModelInfo;

  /**
   * Generates `count` images. Calls on one model run one at a time, in order; a later call waits.
   * Warnings of the engine (e.g. a size far from the native one) go to the console.
   *
   * Input images are fetched and decoded first (on the page for URLs and DOM elements, in the
   * worker for the rest).
   *
   * @throws {SdError} `INVALID_REQUEST` (the message and `field` name the field: also a mask
   *   without an `initImage`, or an input image that cannot be fetched or decoded), `NETWORK`
   *   (an input image URL could not be reached), `ABORTED`, `DISPOSED`, `DEVICE_LOST`,
   *   `OUT_OF_MEMORY`, `INTERNAL`.
   */
  generate(request: GenerateRequest, options?: GenerateOptions): Promise<GeneratedImage[]>;

  /**
   * Frees the model's GPU memory and ends its worker. A running generation rejects with
   * `DISPOSED`, as do later calls. Never rejects; calling it again is harmless.
   */
  dispose(): Promise<void>;
}

export interface CachedModel {
  /** The absolute manifest URL (pass it to `deleteCachedModel` or `StableDiffusion.load`). */
  url: string;
  name: string;
  /** Bytes of its shards. */
  bytes: number;
  /** Number of shards. */
  shards: number;
  /** When it was cached, in ms since the epoch (Date.now()). */
  savedAt: number;
}

/** The models in the browser cache, newest first; [] when IndexedDB is unavailable. */
export function listCachedModels(): Promise<CachedModel[]>;

/**
 * Removes a model from the browser cache. Shards that another cached model also lists stay.
 * Resolves also when the model was not cached. A relative URL resolves against the page.
 */
export function deleteCachedModel(url: string | URL): Promise<void>;
