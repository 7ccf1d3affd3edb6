// Demo page of sd-wgsl: plain ES module, no bundler, no dependencies.
// Programs against the public API of the npm package, served at /pkg/index.js.

const PKG_URL = "/pkg/index.js";
const DEFAULT_MODEL_URL = "models/digits/manifest.json";
const DEFAULT_GUIDANCE = 5.0;

const SAMPLER_LABELS = {
  euler_a: "Euler a",
  euler_a_karras: "Euler a Karras",
  euler: "Euler",
  euler_karras: "Euler Karras",
  heun: "Heun",
  heun_karras: "Heun Karras",
  dpm2: "DPM2",
  dpm2_karras: "DPM2 Karras",
  dpm2_a: "DPM2 a",
  dpm2_a_karras: "DPM2 a Karras",
  "dpm++2s_a": "DPM++ 2S a",
  "dpm++2s_a_karras": "DPM++ 2S a Karras",
  "dpm++2m": "DPM++ 2M",
  "dpm++2m_karras": "DPM++ 2M Karras",
  "dpm++2mv2": "DPM++ 2M v2",
  "dpm++2mv2_karras": "DPM++ 2M v2 Karras",
  lcm: "LCM",
  ddim: "DDIM",
  pndm: "PLMS",
  dpmpp_2m: "DPM++ 2M",
  dpmpp_2m_karras: "DPM++ 2M Karras",
};

// Input images: the default strength, the size rules of the engine (an input image without an
// explicit size sets it: rounded down to multiples of 8, 64..2048), and the mask overlay's colour
// (the mask sent is black and white; the overlay is only how it looks).
const DEFAULT_STRENGTH = 0.75;
const SIZE_MIN = 64;
const SIZE_MAX = 2048;
const MASK_COLOUR = "rgb(255, 72, 160)";

const DIGIT_COLOURS = ["red", "green", "blue", "yellow", "white", "black"];
const DIGIT_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];

// ───────────────────────── elements and shared state ─────────────────────────

const $ = (id) => document.getElementById(id);
const el = {
  prompt: $("prompt"),
  negativePrompt: $("negative-prompt"),
  sampler: $("sampler"),
  steps: $("steps"),
  guidance: $("guidance"),
  seed: $("seed"),
  dice: $("dice"),
  seedClear: $("seed-clear"),
  width: $("width"),
  height: $("height"),
  sizes: $("sizes"),
  sizeNative: $("size-native"),
  sizeSwap: $("size-swap"),
  sizeNote: $("size-note"),
  generate: $("generate"),
  cancel: $("cancel"),
  modelUrl: $("model-url"),
  loadModel: $("load-model"),
  status: $("status"),
  error: $("error"),
  gallery: $("gallery"),
  galleryEmpty: $("gallery-empty"),
  galleryCount: $("gallery-count"),
  galleryClear: $("gallery-clear"),
  surprise: $("surprise"),
  noWebgpu: $("no-webgpu"),
  cpuNotice: $("cpu-notice"),
  insecureHint: $("insecure-hint"),
  modelPill: $("model-pill"),
  modelPillText: $("model-pill-text"),
  modelMeta: $("model-meta"),
  loadPanel: $("load-panel"),
  loadTitle: $("load-title"),
  loadPhase: $("load-phase"),
  loadBar: $("load-bar"),
  loadBytes: $("load-bytes"),
  loadShards: $("load-shards"),
  loadWarning: $("load-warning"),
  stepBar: $("step-bar"),
  stepText: $("step-text"),
  preview: $("preview"),
  stageEmpty: $("stage-empty"),
  cacheList: $("cached-models"),
  cacheEmpty: $("cache-empty"),
  cacheUsage: $("cache-usage"),
  cacheRefresh: $("cache-refresh"),
  adapterInfo: $("adapter-info"),
  inputCard: $("input-card"),
  inputMeta: $("input-meta"),
  inputFile: $("input-file"),
  inputDrop: $("input-drop"),
  inputHint: $("input-hint"),
  inputPanel: $("input-panel"),
  inputCanvas: $("input-canvas"),
  maskCanvas: $("mask-canvas"),
  maskEditor: $("mask-editor"),
  maskStatus: $("mask-status"),
  brushCursor: $("brush-cursor"),
  strength: $("strength"),
  strengthValue: $("strength-value"),
  brushSize: $("brush-size"),
  brushSizeValue: $("brush-size-value"),
  maskErase: $("mask-erase"),
  maskClear: $("mask-clear"),
  inputReplace: $("input-replace"),
  inputClear: $("input-clear"),
};

/** Kept current for the automated browser tests (and for poking around in the console). */
const demo = { model: null, lastError: null, generations: 0, lastRequest: null };
window.sdDemo = demo;

let sd = null; // the imported package module
let loadController = null; // AbortController of the model load in flight
let loadToken = 0; // bumps on every load; stale loads ignore their results
let genController = null; // AbortController of the generation in flight
let nativeSize = null; // { width, height } of the loaded model

// ───────────────────────── small helpers ─────────────────────────

function state() {
  return document.body.dataset.state;
}

function setState(next) {
  document.body.dataset.state = next;
  updateControls();
}

function updateControls() {
  const s = state();
  el.generate.disabled = !(s === "ready" && demo.model);
  el.cancel.disabled = s !== "generating";
  el.loadModel.disabled = !sd || s === "generating";
  el.generate.classList.toggle("busy", s === "generating");
  el.modelPill.dataset.state = s;
}

function setStatus(text) {
  el.status.textContent = text;
}

function formatMB(bytes) {
  return `${(Math.max(0, bytes || 0) / 1e6).toFixed(1)} MB`;
}

function formatBytes(bytes) {
  const b = Math.max(0, bytes || 0);
  return b >= 1e9 ? `${(b / 1e9).toFixed(1)} GB` : formatMB(b);
}

function formatSeconds(ms) {
  return ms < 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`;
}

function randomSeed() {
  const buf = new Uint32Array(1);
  crypto.getRandomValues(buf);
  return buf[0];
}

function pick(list) {
  return list[randomSeed() % list.length];
}

/** Reads a number input: undefined when empty (the library's default applies), else parse(value). */
function readNumber(input, parse) {
  const raw = String(input.value).trim();
  if (raw === "") return undefined;
  return parse(raw);
}

function resolveUrl(raw) {
  try {
    return new URL(raw, location.href).href;
  } catch {
    return raw; // let the library report what is wrong with it
  }
}

function modelLabelFromUrl(url) {
  try {
    const parts = new URL(url, location.href).pathname.split("/").filter(Boolean);
    if (parts.length && /\.json$/i.test(parts[parts.length - 1])) parts.pop();
    return decodeURIComponent(parts[parts.length - 1] || url);
  } catch {
    return url;
  }
}

function samplerLabel(id) {
  return SAMPLER_LABELS[id] || id;
}

function makeError(code, message) {
  try {
    if (sd && typeof sd.SdError === "function") {
      const err = new sd.SdError(message, code);
      if (err.code === code && err.message === message) return err;
    }
  } catch {
    /* fall through */
  }
  const err = new Error(message);
  err.name = "SdError";
  err.code = code;
  return err;
}

function setBar(bar, fraction, { indeterminate = false } = {}) {
  const pct = Math.max(0, Math.min(100, (Number.isFinite(fraction) ? fraction : 0) * 100));
  bar.classList.toggle("indeterminate", indeterminate);
  bar.querySelector(".fill").style.width = indeterminate ? "" : `${pct}%`;
  bar.setAttribute("aria-valuenow", String(Math.round(pct)));
}

// ───────────────────────── errors ─────────────────────────

function showError(err) {
  demo.lastError = err ?? null;
  const code = err && typeof err.code === "string" ? err.code : "";
  const message = (err && (err.message || String(err))) || "Unknown error";
  el.error.replaceChildren();
  if (code) {
    const badge = document.createElement("span");
    badge.className = "code";
    badge.textContent = code;
    el.error.append(badge, " ");
  }
  const text = document.createElement("span");
  text.className = "message";
  text.textContent = message;
  el.error.append(text);
  if (code) el.error.dataset.code = code;
  else el.error.removeAttribute("data-code");
  el.error.hidden = false;
  if (code === "NO_WEBGPU") showNoWebGPU();
  console.error("[sd-wgsl demo]", err);
}

function clearError() {
  demo.lastError = null;
  el.error.replaceChildren();
  el.error.removeAttribute("data-code");
  el.error.hidden = true;
}

function showNoWebGPU() {
  el.noWebgpu.hidden = false;
  el.insecureHint.hidden = window.isSecureContext !== false;
}

// ───────────────────────── form set-up ─────────────────────────

function initForm() {
  const params = new URLSearchParams(location.search);
  el.modelUrl.value = params.get("model") || el.modelUrl.value || DEFAULT_MODEL_URL;

  const frag = document.createDocumentFragment();
  for (let size = 64; size <= 1024; size += 8) {
    const opt = document.createElement("option");
    opt.value = String(size);
    frag.append(opt);
  }
  el.sizes.append(frag);

  el.generate.addEventListener("click", () => generate());
  el.cancel.addEventListener("click", () => cancel());
  el.loadModel.addEventListener("click", () => loadModel(el.modelUrl.value.trim() || DEFAULT_MODEL_URL));
  el.modelUrl.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !el.loadModel.disabled) {
      e.preventDefault();
      el.loadModel.click();
    }
  });

  for (const area of [el.prompt, el.negativePrompt]) {
    area.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        generate();
      }
    });
  }
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state() === "generating") cancel();
  });

  el.dice.addEventListener("click", () => {
    el.seed.value = String(randomSeed());
    el.seed.dispatchEvent(new Event("input", { bubbles: true }));
  });
  el.seedClear.addEventListener("click", () => {
    el.seed.value = "";
    el.seed.focus();
  });

  el.sizeNative.addEventListener("click", () => {
    if (!nativeSize) return;
    el.width.value = String(nativeSize.width);
    el.height.value = String(nativeSize.height);
    updateSizeNote();
  });
  el.sizeSwap.addEventListener("click", () => {
    const w = el.width.value;
    el.width.value = el.height.value;
    el.height.value = w;
    updateSizeNote();
  });

  el.surprise.addEventListener("click", () => {
    const fg = pick(DIGIT_COLOURS);
    let bg = pick(DIGIT_COLOURS);
    while (bg === fg) bg = pick(DIGIT_COLOURS);
    el.prompt.value = `a ${fg} digit ${pick(DIGIT_NUMBERS)} on a ${bg} background`;
    el.prompt.focus();
  });

  el.galleryClear.addEventListener("click", () => {
    for (const img of el.gallery.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    el.gallery.replaceChildren();
    updateGalleryMeta();
  });

  el.cacheRefresh.addEventListener("click", () => refreshCache());
  updateGalleryMeta();
  initInputImage();
}

// ───────────────────────── model loading ─────────────────────────

function applyModelInfo(info) {
  const w = Number(info?.nativeWidth);
  const h = Number(info?.nativeHeight);
  if (Number.isFinite(w) && w > 0 && Number.isFinite(h) && h > 0) {
    nativeSize = { width: w, height: h };
    // With an input image the size follows it unless one is typed in.
    if (!input.image) {
      el.width.value = String(w);
      el.height.value = String(h);
    }
  }
  updateSizeNote();

  const defaults = info?.defaults;
  if (defaults && typeof defaults === "object") {
    const g = defaults.guidanceScale ?? defaults.guidance_scale ?? defaults.guidance;
    if (typeof g === "number" && Number.isFinite(g)) el.guidance.value = Number.isInteger(g) ? g.toFixed(1) : String(g);
  }

  // The model's samplers replace the built-in list; the choice stays when the model has it.
  if (Array.isArray(info?.samplers) && info.samplers.length) {
    const ids = info.samplers.map(String);
    const current = el.sampler.value;
    const fallback = ids.includes(String(defaults?.sampler)) ? String(defaults.sampler) : ids[0];
    el.sampler.replaceChildren(...ids.map((id) => new Option(samplerLabel(id), id)));
    el.sampler.value = ids.includes(current) ? current : fallback;
  }

  const name = info?.name || "model";
  el.modelPillText.textContent = nativeSize ? `${name} · ${nativeSize.width}×${nativeSize.height}` : name;
  const bits = [];
  if (info?.cached) bits.push("kept in browser storage");
  const onCpu = info?.device === "cpu";
  if (onCpu) bits.push("on the CPU (no WebGPU): slow");
  else if (typeof info?.shaderF16 === "boolean") bits.push(info.shaderF16 ? "shader-f16" : "f16 weights packed in u32");
  el.modelMeta.textContent = bits.join(" · ");
  el.cpuNotice.hidden = !onCpu;
  el.adapterInfo.textContent = info?.adapter ? `${onCpu ? "" : "GPU: "}${info.adapter}` : "";
}

function renderLoadProgress(p, label) {
  el.loadPanel.hidden = false;
  const total = Number(p.totalBytes) || 0;
  const loaded = Number(p.loadedBytes) || 0;
  const shardsTotal = Number(p.shardsTotal) || 0;
  const shardsDone = Number(p.shardsDone) || 0;
  const fromCache = Number(p.fromCache) || 0;

  el.loadTitle.textContent = p.phase === "ready" ? `Loaded ${label}` : `Loading ${label}`;

  switch (p.phase) {
    case "manifest":
      el.loadPhase.textContent = "Reading the manifest…";
      setBar(el.loadBar, 0, { indeterminate: true });
      break;
    case "download":
      el.loadPhase.textContent = fromCache && fromCache >= shardsDone ? "Reading from cache…" : "Downloading…";
      setBar(el.loadBar, total ? loaded / total : 0);
      break;
    case "verify":
      el.loadPhase.textContent = "Verifying…";
      setBar(el.loadBar, total ? loaded / total : 1);
      break;
    case "upload":
      el.loadPhase.textContent = p.component ? `Uploading ${p.component} to the GPU…` : "Uploading to the GPU…";
      setBar(el.loadBar, 1, { indeterminate: true });
      break;
    case "ready":
      el.loadPhase.textContent = "Ready";
      setBar(el.loadBar, 1);
      break;
    default:
      el.loadPhase.textContent = p.phase ? String(p.phase) : "";
  }

  if (total) el.loadBytes.textContent = `${formatMB(loaded)} of ${formatMB(total)}`;
  if (shardsTotal) {
    el.loadShards.textContent =
      `${shardsDone} of ${shardsTotal} shard${shardsTotal === 1 ? "" : "s"}` +
      (fromCache ? ` · ${fromCache} from cache` : "");
  }

  if (p.warning) {
    el.loadWarning.textContent = `⚠ ${p.warning}`;
    el.loadWarning.hidden = false;
  }

  if (p.phase === "upload") setStatus(el.loadPhase.textContent);
  else if (p.phase === "download" && total) setStatus(`Loading ${label}: ${formatMB(loaded)} of ${formatMB(total)}`);
}

async function loadModel(rawUrl) {
  if (!sd || state() === "generating") return;
  const url = resolveUrl(rawUrl);
  const label = modelLabelFromUrl(rawUrl);
  const token = ++loadToken;

  clearError();
  loadController?.abort();
  const controller = new AbortController();
  loadController = controller;

  const old = demo.model;
  demo.model = null;
  nativeSize = null;
  setState("loading");
  setStatus(`Loading ${label}…`);
  el.modelPillText.textContent = `Loading ${label}…`;
  el.modelMeta.textContent = "";
  el.loadWarning.hidden = true;
  el.loadWarning.textContent = "";
  el.loadBytes.textContent = "";
  el.loadShards.textContent = "";
  renderLoadProgress({ phase: "manifest" }, label);

  if (old) {
    try {
      await old.dispose();
    } catch (err) {
      console.warn("[sd-wgsl demo] dispose failed", err);
    }
  }
  if (token !== loadToken) return;

  const started = performance.now();
  try {
    const model = await sd.StableDiffusion.load(url, {
      signal: controller.signal,
      onProgress: (p) => {
        if (token === loadToken) renderLoadProgress(p, label);
      },
    });
    if (token !== loadToken) {
      model.dispose().catch(() => {});
      return;
    }
    demo.model = model;
    const info = model.info || {};
    applyModelInfo(info);
    renderLoadProgress({ phase: "ready" }, info.name || label);
    el.loadPhase.textContent = `Ready in ${formatSeconds(performance.now() - started)}`;
    setState("ready");
    const size = nativeSize ? `, ${nativeSize.width}×${nativeSize.height}` : "";
    setStatus(`Ready: ${info.name || label}${size}${info.cached ? " (from cache)" : ""}`);
  } catch (err) {
    if (token !== loadToken) return; // superseded by a newer load
    demo.model = null;
    showError(err);
    el.modelPillText.textContent = "No model";
    el.loadTitle.textContent = `Could not load ${label}`;
    el.loadPhase.textContent = "Failed";
    setBar(el.loadBar, 0);
    setState("error");
    setStatus(`Could not load ${label}`);
  } finally {
    if (loadController === controller) loadController = null;
  }
  refreshCache();
}

// ───────────────────────── input image and mask ─────────────────────────

const input = {
  image: null, // ImageData of the input image, sent as initImage
  name: "",
  looseMask: null, // a mask set (sdDemo.setMask) while there is no input image: sent as is
  maskEmpty: true,
  erase: false,
  drawing: null, // { pointerId, last } while a pointer paints
  cursor: { x: 0, y: 0 }, // the keyboard brush, in image pixels
};

function imageError(field, message, cause) {
  const err = makeError("INVALID_REQUEST", `${field}: ${message}`);
  if (cause) err.cause = cause;
  return err;
}

function context2d(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  return canvas.getContext("2d", { willReadFrequently: true });
}

/** Reads an image (URL, Blob/File, ImageData, <img>, canvas, ImageBitmap) into an ImageData. */
async function readImage(source, field) {
  let value = source;
  if (typeof value === "string" || value instanceof URL) {
    const url = resolveUrl(String(value));
    let res;
    try {
      res = await fetch(url);
    } catch (err) {
      throw imageError(field, `could not download ${url} (${err?.message || err})`, err);
    }
    if (!res.ok) throw imageError(field, `could not download ${url}: HTTP ${res.status}`);
    value = await res.blob();
  }
  if (value instanceof ImageData) return value;
  let bitmap = null;
  try {
    if (value instanceof Blob) {
      // The declared size first: a few kilobytes of PNG can claim gigapixels.
      const declared = await sd.imageHeaderSize(value);
      if (declared && (declared.width > sd.MAX_IMAGE_SIDE || declared.height > sd.MAX_IMAGE_SIDE)) {
        throw imageError(
          field,
          `the image is ${declared.width}×${declared.height} pixels; the largest allowed is ` +
            `${sd.MAX_IMAGE_SIDE}×${sd.MAX_IMAGE_SIDE}`,
        );
      }
      try {
        // The stored pixel values, as the library and the native tools decode them.
        bitmap = await createImageBitmap(value, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
      } catch (err) {
        throw imageError(field, `${value.name || "the file"} is not an image this browser can decode`, err);
      }
      value = bitmap;
    } else if (value instanceof HTMLImageElement && !value.complete) {
      await value.decode();
    }
    const width = value.naturalWidth || value.width;
    const height = value.naturalHeight || value.height;
    if (!(width > 0 && height > 0)) throw imageError(field, "the image has no pixels");
    const ctx = context2d(width, height);
    ctx.drawImage(value, 0, 0, width, height);
    return ctx.getImageData(0, 0, width, height);
  } catch (err) {
    if (err?.name === "SdError") throw err;
    throw imageError(field, `cannot read the image (${err?.message || err})`, err);
  } finally {
    bitmap?.close();
  }
}

/** The size the engine gives a request with this input image and no width/height. */
function sizeForImage(image) {
  const fit = (v) => Math.min(SIZE_MAX, Math.max(SIZE_MIN, Math.floor(v / 8) * 8));
  return { width: fit(image.width), height: fit(image.height) };
}

/** The size the next generation will have (for the stage), or null when the engine decides. */
function requestedSize() {
  const width = readNumber(el.width, (v) => parseInt(v, 10));
  const height = readNumber(el.height, (v) => parseInt(v, 10));
  const base = input.image ? sizeForImage(input.image) : nativeSize;
  if (!base && (width === undefined || height === undefined)) return null;
  return { width: width ?? base.width, height: height ?? base.height };
}

function updateSizeNote() {
  if (input.image) {
    const size = sizeForImage(input.image);
    el.width.placeholder = String(size.width);
    el.height.placeholder = String(size.height);
    const follows = el.width.value.trim() === "" && el.height.value.trim() === "";
    el.sizeNote.textContent = follows
      ? `from the input image: ${size.width}×${size.height}`
      : `input image ${input.image.width}×${input.image.height}, resized`;
  } else {
    el.width.placeholder = nativeSize ? String(nativeSize.width) : "";
    el.height.placeholder = nativeSize ? String(nativeSize.height) : "";
    el.sizeNote.textContent = nativeSize ? `native ${nativeSize.width}×${nativeSize.height}` : "";
  }
}

function maskContext() {
  return el.maskCanvas.getContext("2d", { willReadFrequently: true });
}

function brushSize() {
  return Math.max(1, Number(el.brushSize.value) || 1);
}

/** Shows `image` as the input image (a new one clears the mask). */
function showInputImage(image, name) {
  input.image = image;
  input.name = name || "";
  input.looseMask = null;
  for (const canvas of [el.inputCanvas, el.maskCanvas]) {
    canvas.width = image.width;
    canvas.height = image.height;
  }
  el.inputCanvas.getContext("2d").putImageData(image, 0, 0);
  const pixelated = Math.max(image.width, image.height) < 256;
  el.maskEditor.classList.toggle("pixel", pixelated);
  el.maskEditor.style.aspectRatio = `${image.width} / ${image.height}`;
  el.maskEditor.style.maxWidth = `${Math.min(320, Math.round((360 * image.width) / image.height))}px`;

  const longest = Math.max(image.width, image.height);
  el.brushSize.max = String(Math.max(4, Math.round(longest / 2)));
  el.brushSize.value = String(Math.max(1, Math.round(longest / 10)));
  input.cursor = { x: Math.floor(image.width / 2), y: Math.floor(image.height / 2) };
  updateBrushLabel();
  clearMask();

  el.inputPanel.hidden = false;
  el.inputDrop.hidden = true;
  el.inputHint.hidden = true;
  el.inputMeta.textContent = `${input.name ? `${input.name} · ` : ""}${image.width}×${image.height}`;
  // No explicit size: the request leaves width and height out and the engine follows the image.
  el.width.value = "";
  el.height.value = "";
  updateSizeNote();
}

async function setInputImage(source, name) {
  const image = await readImage(source, "initImage");
  let label = name ?? (source instanceof File ? source.name : "");
  if (name === undefined && (typeof source === "string" || source instanceof URL)) {
    try {
      label = decodeURIComponent(new URL(String(source), location.href).pathname.split("/").pop() || "");
    } catch {
      label = "";
    }
  }
  showInputImage(image, label);
  setStatus(`Input image ${image.width}×${image.height} set: strength ${el.strength.value}`);
  return { width: image.width, height: image.height };
}

function clearInputImage() {
  input.image = null;
  input.name = "";
  input.looseMask = null;
  input.maskEmpty = true;
  el.inputPanel.hidden = true;
  el.inputDrop.hidden = false;
  el.inputHint.hidden = false;
  el.inputMeta.textContent = "optional: img2img and inpainting";
  el.inputFile.value = "";
  if (nativeSize && el.width.value.trim() === "" && el.height.value.trim() === "") {
    el.width.value = String(nativeSize.width);
    el.height.value = String(nativeSize.height);
  }
  updateSizeNote();
}

function clearMask() {
  maskContext().clearRect(0, 0, el.maskCanvas.width, el.maskCanvas.height);
  input.looseMask = null;
  maskChanged();
}

/**
 * Sets the mask from an image (white = repaint), e.g. a mask painted elsewhere. Scaled to the
 * input image (nearest neighbour). Without an input image it is kept as it is and sent alone,
 * which the library refuses (the browser tests check that it says so).
 */
async function setMask(source) {
  const mask = await readImage(source, "mask");
  if (!input.image) {
    input.looseMask = mask;
    setStatus(`Mask ${mask.width}×${mask.height} set, but there is no input image`);
    return { width: mask.width, height: mask.height, withoutImage: true };
  }
  const { width, height } = input.image;
  let pixels = mask;
  if (mask.width !== width || mask.height !== height) {
    const from = context2d(mask.width, mask.height);
    from.putImageData(mask, 0, 0);
    const to = context2d(width, height);
    to.imageSmoothingEnabled = false;
    to.drawImage(from.canvas, 0, 0, width, height);
    pixels = to.getImageData(0, 0, width, height);
  }
  const overlay = new ImageData(width, height);
  const [r, g, b] = MASK_COLOUR.match(/\d+/g).map(Number);
  const src = pixels.data;
  const out = overlay.data;
  for (let i = 0; i < src.length; i += 4) {
    const luma = ((0.299 * src[i] + 0.587 * src[i + 1] + 0.114 * src[i + 2]) * src[i + 3]) / 255;
    if (luma >= 128) {
      out[i] = r;
      out[i + 1] = g;
      out[i + 2] = b;
      out[i + 3] = 255;
    }
  }
  maskContext().putImageData(overlay, 0, 0);
  maskChanged();
  return { width, height, painted: countMasked() };
}

/** How many pixels the mask marks for repainting. */
function countMasked() {
  if (!input.image) return 0;
  const { data } = maskContext().getImageData(0, 0, el.maskCanvas.width, el.maskCanvas.height);
  let n = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] >= 128) n++;
  return n;
}

/** The mask to send: black and white at the input image's size, or null when nothing is painted. */
function maskImageData() {
  if (!input.image) return input.looseMask;
  const { width, height } = el.maskCanvas;
  const painted = maskContext().getImageData(0, 0, width, height).data;
  const mask = new ImageData(width, height);
  const out = mask.data;
  let any = false;
  for (let i = 0; i < out.length; i += 4) {
    const v = painted[i + 3] >= 128 ? 255 : 0;
    any ||= v === 255;
    out[i] = out[i + 1] = out[i + 2] = v;
    out[i + 3] = 255;
  }
  return any ? mask : null;
}

function maskChanged() {
  const n = countMasked();
  input.maskEmpty = n === 0;
  el.maskClear.disabled = input.maskEmpty;
  if (!input.image) return;
  const total = input.image.width * input.image.height;
  el.maskStatus.textContent = input.maskEmpty
    ? "No mask: the whole image is varied. Paint over what should be repainted."
    : `Mask: ${Math.max(1, Math.round((100 * n) / total))}% of the image is repainted, the rest kept.`;
}

function updateBrushLabel() {
  el.brushSizeValue.textContent = `${brushSize()} px`;
  placeCursor(input.cursor, !el.brushCursor.hidden);
}

function updateStrengthLabel() {
  el.strengthValue.textContent = Number(el.strength.value).toFixed(2);
}

function setErase(on) {
  input.erase = on;
  el.maskErase.setAttribute("aria-pressed", String(on));
  el.maskErase.classList.toggle("active", on);
  el.maskEditor.classList.toggle("erasing", on);
}

/** Paints (or erases) a round-capped line from `from` to `to`, in image pixels. */
function stroke(from, to) {
  const ctx = maskContext();
  const size = brushSize();
  ctx.save();
  ctx.globalCompositeOperation = input.erase ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = MASK_COLOUR;
  ctx.lineWidth = size;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.arc(to.x, to.y, size / 2, 0, Math.PI * 2);
  ctx.fill();
  if (from.x !== to.x || from.y !== to.y) {
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  }
  ctx.restore();
}

function canvasPoint(event) {
  const rect = el.maskCanvas.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) * el.maskCanvas.width) / rect.width,
    y: ((event.clientY - rect.top) * el.maskCanvas.height) / rect.height,
  };
}

/** Moves the brush outline to `point` (image pixels). */
function placeCursor(point, visible = true) {
  el.brushCursor.hidden = !visible || !input.image;
  if (el.brushCursor.hidden) return;
  const scale = el.maskCanvas.clientWidth / el.maskCanvas.width || 1;
  const size = brushSize() * scale;
  Object.assign(el.brushCursor.style, {
    width: `${size}px`,
    height: `${size}px`,
    left: `${point.x * scale - size / 2}px`,
    top: `${point.y * scale - size / 2}px`,
  });
}

function initInputImage() {
  el.strength.value = String(DEFAULT_STRENGTH);
  updateStrengthLabel();
  el.strength.addEventListener("input", updateStrengthLabel);
  el.brushSize.addEventListener("input", updateBrushLabel);
  el.maskErase.addEventListener("click", () => setErase(!input.erase));
  el.maskClear.addEventListener("click", () => {
    clearMask();
    el.maskCanvas.focus();
  });
  el.inputClear.addEventListener("click", () => {
    clearInputImage();
    el.inputFile.focus();
  });
  el.inputReplace.addEventListener("click", () => el.inputFile.click());
  for (const field of [el.width, el.height]) field.addEventListener("input", updateSizeNote);

  const take = async (source, name) => {
    clearError();
    try {
      await setInputImage(source, name);
    } catch (err) {
      showError(err);
    }
  };
  el.inputFile.addEventListener("change", () => {
    const file = el.inputFile.files?.[0];
    if (file) take(file);
  });

  // Drop a file, or an image dragged from the gallery or another page (its URL).
  el.inputCard.addEventListener("dragover", (e) => {
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
    el.inputCard.classList.add("dragging");
  });
  el.inputCard.addEventListener("dragleave", (e) => {
    if (!el.inputCard.contains(e.relatedTarget)) el.inputCard.classList.remove("dragging");
  });
  el.inputCard.addEventListener("drop", (e) => {
    e.preventDefault();
    el.inputCard.classList.remove("dragging");
    const file = [...(e.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
    const url = (e.dataTransfer?.getData("text/uri-list") || "").split("\n").find((l) => l && !l.startsWith("#"));
    if (file) take(file);
    else if (url) take(url.trim());
  });
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (!file) return;
    e.preventDefault();
    take(file, "pasted image");
  });

  // Painting with a mouse, pen or finger.
  const canvas = el.maskCanvas;
  canvas.addEventListener("pointerdown", (e) => {
    if (!input.image || (e.pointerType === "mouse" && e.button !== 0)) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    const p = canvasPoint(e);
    input.drawing = { pointerId: e.pointerId, last: p };
    input.cursor = { x: Math.round(p.x), y: Math.round(p.y) };
    stroke(p, p);
    placeCursor(p);
  });
  canvas.addEventListener("pointermove", (e) => {
    const p = canvasPoint(e);
    placeCursor(p);
    if (input.drawing?.pointerId !== e.pointerId) return;
    stroke(input.drawing.last, p);
    input.drawing.last = p;
  });
  const end = (e) => {
    if (input.drawing?.pointerId !== e.pointerId) return;
    input.drawing = null;
    maskChanged();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("pointerleave", () => {
    if (!input.drawing && document.activeElement !== canvas) el.brushCursor.hidden = true;
  });

  // The keyboard: arrows move the brush (Shift paints along), Space or Enter paints, E erases.
  canvas.addEventListener("focus", () => placeCursor(input.cursor));
  canvas.addEventListener("blur", () => {
    el.brushCursor.hidden = true;
  });
  canvas.addEventListener("keydown", (e) => {
    if (!input.image || e.ctrlKey || e.metaKey || e.altKey) return;
    const step = Math.max(1, Math.round(brushSize() / 2));
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    const from = { ...input.cursor };
    if (moves[e.key]) {
      const [dx, dy] = moves[e.key];
      input.cursor = {
        x: Math.min(canvas.width - 1, Math.max(0, from.x + dx)),
        y: Math.min(canvas.height - 1, Math.max(0, from.y + dy)),
      };
      if (e.shiftKey) {
        stroke(from, input.cursor);
        maskChanged();
      }
    } else if (e.key === " " || e.key === "Enter") {
      stroke(from, from);
      maskChanged();
    } else if (e.key === "e" || e.key === "E") {
      setErase(!input.erase);
    } else {
      return;
    }
    e.preventDefault();
    placeCursor(input.cursor);
  });

  Object.assign(demo, {
    /** Sets the input image from a URL, Blob/File, ImageData, <img> or canvas; resolves to its size. */
    setInputImage: (source, name) => setInputImage(source, name),
    clearInputImage,
    /** Sets the mask from an image (white = repaint) instead of painting it. */
    setMask,
    clearMask,
    /** The mask the next generation sends (black and white ImageData), or null. */
    maskImageData,
    /** The input image (ImageData) or null. */
    inputImage: () => input.image,
  });
}

// ───────────────────────── generation ─────────────────────────

function buildRequest() {
  const request = { prompt: el.prompt.value };
  const negative = el.negativePrompt.value;
  if (negative.trim() !== "") request.negativePrompt = negative;
  request.sampler = el.sampler.value;

  const steps = readNumber(el.steps, (v) => parseInt(v, 10));
  if (steps !== undefined) request.steps = steps;
  const guidance = readNumber(el.guidance, (v) => parseFloat(v));
  if (guidance !== undefined) request.guidanceScale = guidance;
  const seed = readNumber(el.seed, (v) => parseInt(v, 10));
  request.seed = seed !== undefined ? seed : randomSeed();
  const width = readNumber(el.width, (v) => parseInt(v, 10));
  if (width !== undefined) request.width = width;
  const height = readNumber(el.height, (v) => parseInt(v, 10));
  if (height !== undefined) request.height = height;
  // Without width and height the engine takes the input image's size (rounded to multiples of 8).
  if (input.image) {
    request.initImage = input.image;
    request.strength = parseFloat(el.strength.value);
    const mask = maskImageData();
    if (mask) request.mask = mask;
  } else if (input.looseMask) {
    request.mask = input.looseMask;
  }
  return request;
}

/** The request without pixels, for window.sdDemo.lastRequest. */
function describeRequest(request) {
  const out = { ...request };
  for (const field of ["initImage", "mask"]) {
    const image = request[field];
    if (image) out[field] = { width: image.width, height: image.height };
  }
  return out;
}

function requestMode(request) {
  if (request.mask) return "inpaint";
  return request.initImage ? "img2img" : "txt2img";
}

function toImageData(preview) {
  if (!preview) return null;
  if (typeof ImageData !== "undefined" && preview instanceof ImageData) return preview;
  const { width, height, rgba, data } = preview;
  const bytes = rgba || data;
  if (!width || !height || !bytes) return null;
  try {
    return new ImageData(new Uint8ClampedArray(bytes), width, height);
  } catch {
    return null;
  }
}

function drawOnStage(imageData) {
  const img = toImageData(imageData);
  if (!img) return;
  const canvas = el.preview;
  if (canvas.width !== img.width || canvas.height !== img.height) {
    canvas.width = img.width;
    canvas.height = img.height;
  }
  canvas.getContext("2d").putImageData(img, 0, 0);
  canvas.classList.add("shown");
  el.stageEmpty.hidden = true;
}

function fitStage(width, height) {
  // Display box for the requested size (the preview arrives at latent resolution, same aspect).
  if (!(width > 0 && height > 0)) return;
  const maxSide = 512;
  const scale = maxSide / Math.max(width, height);
  el.preview.style.width = `${Math.round(width * scale)}px`;
}

function renderGenProgress(p, request) {
  if (!p) return;
  const count = Number(p.count) || 1;
  const prefix = count > 1 ? `Image ${Math.min(count, (Number(p.image) || 0) + 1)} of ${count} · ` : "";
  const total = Number(p.total) || request.steps || 0;
  const step = Number(p.step) || 0;
  switch (p.stage) {
    case "encode":
      el.stepText.textContent = `${prefix}Encoding the prompt…`;
      setBar(el.stepBar, 0, { indeterminate: true });
      break;
    case "diffusion":
      el.stepText.textContent = `${prefix}Step ${step} of ${total}`;
      setBar(el.stepBar, total ? step / total : 0);
      break;
    case "decode":
      el.stepText.textContent = `${prefix}Decoding the image…`;
      setBar(el.stepBar, 1, { indeterminate: true });
      break;
    case "done":
      setBar(el.stepBar, 1);
      break;
    default:
      break;
  }
  if (p.preview) drawOnStage(p.preview);
  if (p.stage === "diffusion") setStatus(`Generating: step ${step} of ${total}`);
}

function cancel() {
  if (!genController) return;
  genController.abort();
  el.cancel.disabled = true;
  setStatus("Cancelling…");
}

async function generate() {
  if (state() !== "ready" || !demo.model || genController) return;
  clearError();
  const model = demo.model;
  const request = buildRequest();
  demo.lastRequest = describeRequest(request);
  const controller = new AbortController();
  genController = controller;
  setState("generating");
  setStatus("Generating…");
  el.stepText.textContent = "Starting…";
  setBar(el.stepBar, 0, { indeterminate: true });
  const size = requestedSize();
  if (size) fitStage(size.width, size.height);

  const started = performance.now();
  try {
    const images = await model.generate(request, {
      signal: controller.signal,
      onProgress: (p) => renderGenProgress(p, request),
    });
    const elapsed = performance.now() - started;
    const list = Array.isArray(images) ? images : [];
    demo.generations += 1;
    if (list.length) {
      const last = list[list.length - 1];
      fitStage(last.width, last.height);
      drawOnStage(last.imageData);
    }
    for (let i = list.length - 1; i >= 0; i--) addResult(list[i], request, elapsed);
    updateGalleryMeta();
    setBar(el.stepBar, 1);
    const steps = list[0]?.params?.steps ?? request.steps;
    el.stepText.textContent = `Done: ${steps ?? "?"} steps in ${formatSeconds(elapsed)}`;
    setStatus(
      list.length > 1
        ? `Done: ${list.length} images in ${formatSeconds(elapsed)}`
        : `Done in ${formatSeconds(elapsed)} (seed ${list[0]?.seed ?? request.seed})`,
    );
  } catch (err) {
    if (err && err.code === "ABORTED") {
      demo.lastError = err;
      el.stepText.textContent = "Cancelled";
      setBar(el.stepBar, 0);
      setStatus("Cancelled");
    } else {
      showError(err);
      el.stepText.textContent = "Failed";
      setBar(el.stepBar, 0);
      setStatus("Generation failed");
    }
  } finally {
    if (genController === controller) genController = null;
    if (state() === "generating") setState(demo.model ? "ready" : "error");
  }
}

// ───────────────────────── gallery ─────────────────────────

function addResult(image, request, elapsed) {
  const params = { ...request, ...(image.params || {}) };
  const seed = image.seed ?? params.seed;
  const width = image.width ?? params.width;
  const height = image.height ?? params.height;
  const url = URL.createObjectURL(image.blob);

  const figure = document.createElement("figure");
  figure.className = "result";
  figure.dataset.seed = String(seed);
  figure.dataset.mode = requestMode(request);
  if (request.initImage && params.strength !== undefined) figure.dataset.strength = String(params.strength);

  const frame = document.createElement("div");
  frame.className = "frame";
  const img = document.createElement("img");
  img.src = url;
  img.alt = params.prompt || "generated image";
  img.width = width;
  img.height = height;
  img.decoding = "async";
  if (Math.max(width, height) < 256) img.classList.add("pixel");
  frame.append(img);

  const caption = document.createElement("figcaption");
  const prompt = document.createElement("p");
  prompt.className = "prompt";
  prompt.textContent = params.prompt || "(empty prompt)";
  caption.append(prompt);
  if (params.negativePrompt) {
    const neg = document.createElement("p");
    neg.className = "negative";
    neg.textContent = `not: ${params.negativePrompt}`;
    caption.append(neg);
  }

  const dl = document.createElement("dl");
  dl.className = "params";
  const rows = [
    ["Seed", seed],
    ["Sampler", samplerLabel(params.sampler)],
    ["Steps", params.steps],
    ["Guidance", params.guidanceScale],
    ["Size", `${width}×${height}`],
    ["Strength", request.initImage ? params.strength : undefined],
    ["Input", request.initImage ? (request.mask ? "image + mask" : "image") : undefined],
    ["Time", formatSeconds(elapsed)],
  ];
  for (const [k, v] of rows) {
    if (v === undefined || v === null || v === "") continue;
    const wrap = document.createElement("div");
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = String(v);
    wrap.append(dt, dd);
    dl.append(wrap);
  }
  caption.append(dl);

  const actions = document.createElement("div");
  actions.className = "result-actions";
  const download = document.createElement("a");
  download.className = "btn small download";
  download.href = url;
  download.download = `sd-${seed}.png`;
  download.setAttribute("role", "button");
  download.textContent = "Download";
  const reuse = document.createElement("button");
  reuse.type = "button";
  reuse.className = "btn small ghost reuse";
  reuse.textContent = "Reuse settings";
  reuse.title = "Put this image's prompt, seed and settings back into the form";
  reuse.addEventListener("click", () => reuseSettings(params, seed, width, height));
  const useInput = document.createElement("button");
  useInput.type = "button";
  useInput.className = "btn small ghost use-input";
  useInput.textContent = "Use as input";
  useInput.title = "Make this image the input image (img2img, inpainting)";
  useInput.addEventListener("click", async () => {
    clearError();
    try {
      await setInputImage(image.blob, `seed ${seed}`);
      el.inputCard.scrollIntoView({ block: "nearest", behavior: "smooth" });
      el.maskCanvas.focus({ preventScroll: true });
    } catch (err) {
      showError(err);
    }
  });
  actions.append(download, reuse, useInput);
  caption.append(actions);

  figure.append(frame, caption);
  el.gallery.prepend(figure);
}

function reuseSettings(params, seed, width, height) {
  el.prompt.value = params.prompt ?? "";
  el.negativePrompt.value = params.negativePrompt ?? "";
  if (params.sampler && [...el.sampler.options].some((o) => o.value === params.sampler)) {
    el.sampler.value = params.sampler;
  }
  if (params.steps !== undefined) el.steps.value = String(params.steps);
  if (params.guidanceScale !== undefined) el.guidance.value = String(params.guidanceScale);
  if (seed !== undefined) el.seed.value = String(seed);
  if (width) el.width.value = String(width);
  if (height) el.height.value = String(height);
  if (typeof params.strength === "number" && params.initImage) {
    el.strength.value = String(params.strength);
    updateStrengthLabel();
  }
  updateSizeNote();
  setStatus(`Settings of seed ${seed} restored`);
}

function updateGalleryMeta() {
  const n = el.gallery.querySelectorAll("figure.result").length;
  el.galleryEmpty.hidden = n > 0;
  el.galleryClear.hidden = n === 0;
  el.galleryCount.textContent = n ? `(${n})` : "";
}

// ───────────────────────── cache ─────────────────────────

async function refreshCache() {
  if (!sd || typeof sd.listCachedModels !== "function") return;
  let list;
  try {
    list = await sd.listCachedModels();
  } catch (err) {
    el.cacheList.replaceChildren();
    el.cacheEmpty.hidden = false;
    el.cacheEmpty.textContent = `Browser storage is not available (${err?.message || err}).`;
    return;
  }
  list = Array.isArray(list) ? [...list].sort((a, b) => (b.savedAt || 0) - (a.savedAt || 0)) : [];

  el.cacheList.replaceChildren();
  for (const entry of list) {
    const li = document.createElement("li");
    const meta = document.createElement("div");
    meta.className = "cache-meta";
    const name = document.createElement("span");
    name.className = "strong";
    name.textContent = entry.name || modelLabelFromUrl(entry.url);
    const detail = document.createElement("span");
    detail.className = "muted small";
    const saved = entry.savedAt ? new Date(entry.savedAt).toLocaleDateString() : "";
    detail.textContent = [
      formatMB(entry.bytes),
      `${entry.shards} shard${entry.shards === 1 ? "" : "s"}`,
      saved && `saved ${saved}`,
    ]
      .filter(Boolean)
      .join(" · ");
    const url = document.createElement("span");
    url.className = "muted tiny url";
    url.textContent = entry.url;
    url.title = entry.url;
    meta.append(name, detail, url);

    const buttons = document.createElement("div");
    buttons.className = "cache-buttons";
    const load = document.createElement("button");
    load.type = "button";
    load.className = "btn small ghost";
    load.textContent = "Load";
    load.disabled = state() === "generating";
    load.addEventListener("click", () => {
      el.modelUrl.value = entry.url;
      loadModel(entry.url);
    });
    const del = document.createElement("button");
    del.type = "button";
    del.className = "btn small ghost danger-text delete";
    del.textContent = "Delete";
    del.addEventListener("click", async () => {
      del.disabled = true;
      try {
        await sd.deleteCachedModel(entry.url);
        setStatus(`Removed ${entry.name || entry.url} from the cache`);
      } catch (err) {
        showError(err);
      }
      refreshCache();
    });
    buttons.append(load, del);
    li.append(meta, buttons);
    el.cacheList.append(li);
  }
  el.cacheEmpty.hidden = list.length > 0;
  el.cacheEmpty.textContent = "Nothing cached yet.";

  try {
    const est = await navigator.storage?.estimate?.();
    if (est && est.quota) {
      el.cacheUsage.textContent = `This site uses ${formatBytes(est.usage)} of ${formatBytes(est.quota)} of browser storage.`;
    }
  } catch {
    /* estimate is optional */
  }
}

// ───────────────────────── start-up ─────────────────────────

async function main() {
  initForm();
  setState("loading");
  setStatus("Loading the sd-wgsl package…");

  try {
    sd = await import(PKG_URL);
  } catch (err) {
    const e = makeError("INTERNAL", `Could not load the sd-wgsl package from ${PKG_URL}: ${err?.message || err}`);
    showError(e);
    setState("error");
    setStatus("The sd-wgsl package did not load");
    return;
  }
  updateControls();

  refreshCache();

  // A link's `?model=` on another site is loaded only once the user agrees, having seen where
  // it comes from and how much it declares.
  const linked = new URLSearchParams(location.search).get("model");
  if (linked && !(await confirmLinkedModel(resolveUrl(linked)))) {
    setState("error");
    setStatus("The linked model was not loaded: press Load to load it");
    el.modelPillText.textContent = "No model";
    return;
  }
  // Without WebGPU the package runs the CPU module (device "auto"); applyModelInfo then shows
  // the CPU notice. The no-WebGPU banner is left for a load that fails with NO_WEBGPU.
  await loadModel(el.modelUrl.value.trim() || DEFAULT_MODEL_URL);
}

/** Asks before loading a model of another origin; true for one of this origin. */
async function confirmLinkedModel(url) {
  let origin;
  try {
    origin = new URL(url).origin;
  } catch {
    return true; // the load reports what is wrong with it
  }
  if (origin === location.origin) return true;
  let declared = "an unknown size (its manifest could not be read)";
  try {
    const response = await fetch(url, { cache: "no-cache" });
    const manifest = await response.json();
    const total = (manifest.shards || []).reduce((sum, shard) => sum + (Number(shard.size) || 0), 0);
    declared = `${formatMB(total)} in ${(manifest.shards || []).length} files`;
  } catch {
    // keep "unknown"
  }
  return window.confirm(
    `This link loads a model from another site:\n${url}\n\nIt declares ${declared} to download. Load it?`,
  );
}

if (el.guidance.value === "") el.guidance.value = DEFAULT_GUIDANCE.toFixed(1);
main();
