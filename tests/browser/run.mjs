#!/usr/bin/env node
// Drives the demo page and the npm package in headless Chromium (WebGPU on Dawn's SwiftShader
// adapter where there is no GPU) and writes down what happened. It judges nothing: the Rust side
// (tests/tests/browser.rs, tests/examples/bench_web.rs) reads results.json / bench.json and the
// PNGs and decides.
//
//   node tests/browser/run.mjs --base http://127.0.0.1:PORT --out DIR [--mode test|bench]
//                              [--only first,second,corrupt,cancel,bad-input,img2img,inpaint,readme,arch,limits,no-webgpu]
//                              [--reps N]
//
// The server at --base must serve the contract's routes (`/` the demo, `/pkg/` the package,
// `/models/digits/` the web model, `/__requests` its request log) and, for img2img and inpaint,
// the shared fixtures at `/fixtures/`; tests/tests/browser.rs does. CHROMIUM overrides the browser binary (default /usr/bin/chromium);
// SD_BROWSER_TIMEOUT_SCALE multiplies every timeout (slow machines).
//
// test mode, phases in order (one persistent profile, so IndexedDB survives reloads):
//   first      load the demo, generate "a red digit seven on a blue background" (seed 7,
//              euler_a, 20 steps, guidance 5, the page's native size) -> first.png, demo.png;
//              then the same in 3 steps (QUICK) -> first_quick.png
//   second     reload, generate QUICK -> second.png; shard requests during the phase
//   corrupt    flip bytes of one cached shard in IndexedDB, reload, generate QUICK ->
//              corrupt.png; how often that shard was requested
//   cancel     start 20 steps, cancel at step >= 2 -> the error code; then generate QUICK ->
//              after_cancel.png
//              (second, corrupt and after_cancel must equal first_quick.png: the same weights and
//              state give the same pixels; 3 steps instead of 20 save ~4 minutes on SwiftShader)
//   bad-input  width 30, steps 0, sampler "unknown", and a mask without an input image
//              (sdDemo.setMask with no sdDemo.setInputImage): the code and message shown in #error
//   img2img    sdDemo.setInputImage(the fixture red 7 on blue), strength 0.9, "a yellow digit zero
//              on a green background" (IMG2IMG below) -> img2img.png; width and height left empty,
//              so the output takes the input's size
//   inpaint    the same input, sdDemo.setMask(a 64x64 black PNG with a white square, drawn in the
//              page), strength 1, "a red digit three on a blue background" (INPAINT below) ->
//              inpaint.png, and inpaint_mask.png = the mask the demo sent (its white pixels
//              inside and outside the square are counted in results.json)
//   readme     the first ```js block of /pkg/README.md as a page's module script (import map
//              "sd-wgsl" -> /pkg/index.js) -> readme.png
//   arch       the other architectures: for each case of /arch/cases.json (the tiny SD 2, SD-Turbo,
//              SDXL and LCM web models tests/tests/browser.rs converts), StableDiffusion.load its
//              manifest and generate its request from its recorded starting latents (raw f32 at
//              case.latents) -> arch-<name>.png
//   limits     what the browser does not trust: the demo opened with ?model= of another origin
//              (https://models.example, routed to the digits manifest) asks first, showing the
//              declared size (dismissed: nothing loads); the package refuses a manifest declaring a
//              4 GiB shard and reads an image's size from its header (a PNG claiming 16384x16384,
//              and the PNG, JPEG and WebP the canvas makes); the demo refuses the 16384x16384 PNG
//              as an input image before decoding it
//   no-webgpu  the demo in a Chromium without --enable-unsafe-webgpu: it falls back to the CPU
//              module, shows the CPU notice and generates FIRST -> no-webgpu.png; the package
//              with device "webgpu" there rejects with NO_WEBGPU, and device "tpu" with
//              INVALID_REQUEST
// Every phase records /__requests before and after. Console messages, page errors and failed
// requests of every page are recorded. results.json is written after every phase and on failure.
//
// bench mode: a page importing /pkg/index.js times a cold load (empty cache), a warm-up
// generation, the timed 20-step generation(s) at the native size, and a cached load (a second
// StableDiffusion.load after dispose) -> bench.json.

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const PROMPT = "a red digit seven on a blue background";
const PHASES = ["first", "second", "corrupt", "cancel", "bad-input", "img2img", "inpaint", "readme", "arch", "limits", "no-webgpu"];

// img2img and inpainting, the contract's scenarios. The seeds, steps and strengths are here to be
// tuned; tests/tests/browser.rs judges the pictures (img2img: 0/yellow/green; inpaint: digit 3 on
// blue, the border near the input).
const INPUT_IMAGE_PATH = "/fixtures/tiny-sd-digits-refs/more_refs_png/img2img_input.png"; // red 7 on blue, 64x64
const IMG2IMG = {
  prompt: "a yellow digit zero on a green background",
  "negative-prompt": "",
  sampler: "euler",
  steps: 10,
  guidance: 5,
  seed: 1,
  strength: 0.9,
};
const INPAINT = {
  prompt: "a red digit three on a blue background",
  "negative-prompt": "",
  sampler: "euler",
  steps: 10,
  guidance: 5,
  seed: 1,
  strength: 1,
};
/** The inpainting mask: 64x64 black, white where x and y are in [from, to). */
const INPAINT_SQUARE = { size: 64, from: 8, to: 56 };
const CHROMIUM_ARGS = [
  "--enable-unsafe-webgpu",
  "--no-sandbox",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
];

// ───────────────────────── arguments and timeouts ─────────────────────────

function parseArgs(argv) {
  const args = { base: null, out: null, mode: "test", only: PHASES, reps: 1 };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case "--base":
        args.base = value().replace(/\/+$/, "");
        break;
      case "--out":
        args.out = path.resolve(value());
        break;
      case "--mode":
        args.mode = value();
        break;
      case "--only":
        args.only = value().split(",").map((s) => s.trim()).filter(Boolean);
        break;
      case "--reps":
        args.reps = Math.max(1, parseInt(value(), 10) || 1);
        break;
      default:
        throw new Error(`unknown argument ${flag}`);
    }
  }
  if (!args.base || !args.out) throw new Error("usage: run.mjs --base URL --out DIR [--mode test|bench]");
  if (!["test", "bench"].includes(args.mode)) throw new Error(`--mode: test or bench, not ${args.mode}`);
  for (const p of args.only) if (!PHASES.includes(p)) throw new Error(`--only: unknown phase ${p} (${PHASES.join(", ")})`);
  return args;
}

const SCALE = Number(process.env.SD_BROWSER_TIMEOUT_SCALE) > 0 ? Number(process.env.SD_BROWSER_TIMEOUT_SCALE) : 1;
const T = {
  launch: 120_000 * SCALE,
  navigate: 60_000 * SCALE,
  load: 600_000 * SCALE, // package + wasm + shards + GPU upload on a software adapter
  generate: 600_000 * SCALE, // 20 steps on SwiftShader, with first-use shader compilation
  short: 30_000 * SCALE,
};

// ───────────────────────── results ─────────────────────────

const args = parseArgs(process.argv.slice(2));
fs.mkdirSync(args.out, { recursive: true });
const resultsFile = path.join(args.out, args.mode === "bench" ? "bench.json" : "results.json");
const results = {
  mode: args.mode,
  base: args.base,
  chromium: process.env.CHROMIUM || "/usr/bin/chromium",
  chromiumArgs: CHROMIUM_ARGS,
  startedAt: new Date().toISOString(),
  finishedAt: null,
  ok: false,
  error: null,
  phases: {},
  console: [],
  consoleErrors: [],
  pageErrors: [],
  requestFailures: [],
};

function save() {
  fs.writeFileSync(resultsFile, JSON.stringify(results, null, 2) + "\n");
}

function log(...parts) {
  console.log("[run.mjs]", ...parts);
}

function errorText(err) {
  if (!err) return "unknown error";
  return err.stack || err.message || String(err);
}

// ───────────────────────── server request log ─────────────────────────

async function requests() {
  const res = await fetch(`${args.base}/__requests`, { signal: AbortSignal.timeout(T.short) });
  if (!res.ok) throw new Error(`GET /__requests: HTTP ${res.status}`);
  return res.json();
}

function diffRequests(before, after) {
  const delta = {};
  for (const [p, n] of Object.entries(after.paths || {})) {
    const d = n - ((before.paths || {})[p] || 0);
    if (d > 0) delta[p] = d;
  }
  return delta;
}

function shardRequests(delta) {
  return Object.entries(delta)
    .filter(([p]) => p.endsWith(".safetensors"))
    .reduce((sum, [, n]) => sum + n, 0);
}

/** Runs `fn` as phase `name`: its record gets the request log around it, its time and its error. */
async function phase(name, fn) {
  const record = { ok: false, error: null };
  results.phases[name] = record;
  const started = Date.now();
  log(`phase ${name}`);
  try {
    record.requestsBefore = await requests();
    await fn(record);
    record.ok = true;
  } catch (err) {
    record.error = errorText(err);
    log(`phase ${name} failed: ${record.error}`);
  } finally {
    try {
      record.requestsAfter = await requests();
      if (record.requestsBefore) {
        record.requests = diffRequests(record.requestsBefore, record.requestsAfter);
        record.shardRequests = shardRequests(record.requests);
      }
    } catch (err) {
      record.requestLogError = errorText(err);
    }
    record.ms = Date.now() - started;
    save();
  }
  return record.ok;
}

// ───────────────────────── pages ─────────────────────────

function watch(page, name) {
  page.on("console", (msg) => {
    // Messages of the page's workers (the pipeline runs in one) arrive here too.
    const entry = { page: msg.worker?.() ? `${name}/worker` : name, type: msg.type(), text: msg.text() };
    if (results.console.length < 1000) results.console.push(entry);
    if (msg.type() === "error") results.consoleErrors.push(entry);
  });
  page.on("pageerror", (err) => {
    results.pageErrors.push({ page: name, message: err.message, stack: err.stack || null });
  });
  page.on("crash", () => {
    results.pageErrors.push({ page: name, message: "the page crashed", stack: null });
    log(`the ${name} page crashed`);
  });
  page.on("requestfailed", (req) => {
    results.requestFailures.push({ page: name, url: req.url(), failure: req.failure()?.errorText ?? null });
  });
}

/** Waits until the demo is in one of `states`; a page in "error" while waiting for another state throws. */
async function waitState(page, states, timeout) {
  const handle = await page.waitForFunction(
    (states) => {
      const s = document.body?.dataset.state;
      if (states.includes(s)) return { state: s };
      if (s === "error") return { state: s, error: document.getElementById("error")?.textContent ?? "" };
      return false;
    },
    states,
    { timeout, polling: 100 },
  );
  const value = await handle.jsonValue();
  if (!states.includes(value.state)) {
    throw new Error(`the page went to state "${value.state}" (waiting for ${states.join("/")}): ${value.error}`);
  }
  return value.state;
}

async function openDemo(page, reload) {
  const started = Date.now();
  if (reload) await page.reload({ timeout: T.navigate, waitUntil: "load" });
  else await page.goto(`${args.base}/`, { timeout: T.navigate, waitUntil: "load" });
  await waitState(page, ["ready"], T.load);
  const info = await page.evaluate(() => {
    const i = window.sdDemo?.model?.info;
    return i ? JSON.parse(JSON.stringify(i)) : null;
  });
  return { loadMs: Date.now() - started, info, status: await text(page, "#status") };
}

async function text(page, selector) {
  return page.evaluate((s) => document.querySelector(s)?.textContent?.trim() ?? null, selector);
}

/** Sets form fields through the DOM (works for any input type); a select gets a missing option added. */
async function setForm(page, fields) {
  await page.evaluate((fields) => {
    for (const [id, v] of Object.entries(fields)) {
      if (v === undefined || v === null) continue;
      const el = document.getElementById(id);
      if (!el) throw new Error(`the demo page has no #${id}`);
      const value = String(v);
      if (el.tagName === "SELECT" && ![...el.options].some((o) => o.value === value)) {
        el.append(new Option(value, value));
      }
      el.value = value;
      el.dispatchEvent(new Event("input", { bubbles: true }));
      el.dispatchEvent(new Event("change", { bubbles: true }));
    }
  }, fields);
}

async function formValues(page) {
  return page.evaluate(() => {
    const v = (id) => document.getElementById(id)?.value ?? null;
    return {
      prompt: v("prompt"),
      "negative-prompt": v("negative-prompt"),
      sampler: v("sampler"),
      steps: v("steps"),
      guidance: v("guidance"),
      seed: v("seed"),
      width: v("width"),
      height: v("height"),
    };
  });
}

/** The error the page shows and the one it keeps in window.sdDemo.lastError. */
async function shownError(page) {
  return page.evaluate(() => {
    const el = document.getElementById("error");
    const last = window.sdDemo?.lastError;
    return {
      code: el?.dataset.code ?? null,
      text: el && !el.hidden ? el.textContent.trim() : "",
      visible: !!el && !el.hidden,
      lastError: last ? { code: last.code ?? null, name: last.name ?? null, message: last.message ?? String(last) } : null,
    };
  });
}

/** Clicks #generate with `fields` set and waits until the generation ends (an image or an error). */
async function generate(page, fields, timeout = T.generate) {
  await waitState(page, ["ready"], T.load);
  await setForm(page, fields);
  const before = await page.evaluate(() => {
    window.sdDemo.lastError = null;
    return {
      generations: window.sdDemo.generations,
      images: document.querySelectorAll("#gallery figure.result").length,
    };
  });
  const started = Date.now();
  await page.click("#generate", { timeout: T.short });
  await page.waitForFunction(
    (before) =>
      document.body.dataset.state !== "generating" &&
      (window.sdDemo.generations > before.generations || window.sdDemo.lastError || document.body.dataset.state === "error"),
    before,
    { timeout, polling: 100 },
  );
  const after = await page.evaluate(() => ({
    generations: window.sdDemo.generations,
    images: document.querySelectorAll("#gallery figure.result").length,
    state: document.body.dataset.state,
  }));
  return {
    ms: Date.now() - started,
    generated: after.generations > before.generations,
    newImages: after.images - before.images,
    state: after.state,
    status: await text(page, "#status"),
    error: await shownError(page),
  };
}

/** Fetches the bytes of the newest gallery image (its blob URL) and writes them to `file`. */
async function saveNewestImage(page, file) {
  const got = await page.evaluate(async () => {
    const figure = document.querySelector("#gallery figure.result");
    const img = figure?.querySelector("img");
    if (!img) return null;
    return {
      ...(await window.__sdBytes(img.src)),
      seed: figure.dataset.seed ?? null,
      mode: figure.dataset.mode ?? null,
      strength: figure.dataset.strength ?? null,
    };
  });
  if (!got) throw new Error("the gallery has no image");
  return writeImage(got, file);
}

function writeImage(got, file) {
  const bytes = Buffer.from(got.base64, "base64");
  fs.writeFileSync(path.join(args.out, file), bytes);
  const { base64, ...meta } = got;
  return { file, bytes: bytes.length, ...meta };
}

// Added to every page: reads a URL (blob:, data: or http) and returns its bytes as base64.
const INIT_SCRIPT = `
window.__sdBytes = async (url) => {
  const res = await fetch(url);
  const buf = new Uint8Array(await res.arrayBuffer());
  let s = "";
  for (let i = 0; i < buf.length; i += 0x8000) s += String.fromCharCode.apply(null, buf.subarray(i, i + 0x8000));
  const img = [...document.images].find((i) => i.src === url);
  return { base64: btoa(s), type: res.headers.get("content-type"),
           width: img ? img.naturalWidth : null, height: img ? img.naturalHeight : null };
};`;

// ───────────────────────── input images ─────────────────────────

/** Sets the demo's input image through sdDemo.setInputImage; what the page then shows. */
async function setInputImage(page, url) {
  return page.evaluate(async (url) => {
    const size = await window.sdDemo.setInputImage(url);
    const v = (id) => document.getElementById(id);
    return {
      url,
      ...size,
      widthField: v("width").value,
      heightField: v("height").value,
      sizeNote: v("size-note").textContent,
      strengthVisible: !!v("strength") && v("strength").offsetParent !== null,
    };
  }, url);
}

/** Draws INPAINT_SQUARE's mask in the page as a PNG and gives it to sdDemo.setMask. */
async function setSquareMask(page) {
  return page.evaluate(async ({ size, from, to }) => {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = size;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, size, size);
    ctx.fillStyle = "#fff";
    ctx.fillRect(from, from, to - from, to - from);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    return window.sdDemo.setMask(blob);
  }, INPAINT_SQUARE);
}

/** The mask the demo will send: its white pixels inside and outside INPAINT_SQUARE, and a PNG of it. */
async function maskToSend(page, file) {
  const got = await page.evaluate(async ({ from, to }) => {
    const mask = window.sdDemo.maskImageData();
    if (!mask) return null;
    const { width, height, data } = mask;
    let whiteInside = 0;
    let whiteOutside = 0;
    let other = 0;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const v = data[(y * width + x) * 4];
        const inside = x >= from && x < to && y >= from && y < to;
        if (v === 255) inside ? whiteInside++ : whiteOutside++;
        else if (v !== 0) other++;
      }
    }
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    canvas.getContext("2d").putImageData(mask, 0, 0);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    const png = await window.__sdBytes(URL.createObjectURL(blob));
    return {
      width,
      height,
      whiteInside,
      whiteOutside,
      notBlackOrWhite: other,
      insidePixels: Math.max(0, to - from) ** 2,
      status: document.getElementById("mask-status")?.textContent ?? null,
      png,
    };
  }, INPAINT_SQUARE);
  if (!got) throw new Error("the demo has no mask to send after sdDemo.setMask");
  const { png, ...summary } = got;
  return { ...summary, image: writeImage(png, file) };
}

// ───────────────────────── test phases ─────────────────────────

const FIRST = { prompt: PROMPT, "negative-prompt": "", sampler: "euler_a", steps: 20, guidance: 5, seed: 7 };
/** FIRST in 3 steps: the phases that repeat a generation compare their image with this one. */
const QUICK = { ...FIRST, steps: 3 };

async function manifestShards() {
  const url = `${args.base}/models/digits/manifest.json`;
  const res = await fetch(url, { signal: AbortSignal.timeout(T.short) });
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
  const manifest = await res.json();
  return (manifest.shards || []).map((s) => ({ ...s, path: new URL(s.file, url).pathname }));
}

/** Flips 16 bytes in the middle of the first cached shard (IndexedDB "sd-wgsl", store "shards"). */
async function corruptFirstCachedShard(page) {
  return page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        const open = indexedDB.open("sd-wgsl");
        open.onupgradeneeded = () => {
          open.transaction.abort();
          reject(new Error('IndexedDB has no database "sd-wgsl": nothing was cached'));
        };
        open.onerror = () => reject(open.error);
        open.onsuccess = () => {
          const db = open.result;
          const tx = db.transaction("shards", "readwrite");
          const store = tx.objectStore("shards");
          const count = store.count();
          const cursor = store.openCursor();
          let done = null;
          cursor.onsuccess = () => {
            const c = cursor.result;
            if (!c) return reject(new Error('the store "shards" is empty'));
            const value = c.value;
            const data = value.data;
            let bytes;
            if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
            else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
            else return reject(new Error(`shard data is a ${Object.prototype.toString.call(data)}, not an ArrayBuffer`));
            const middle = Math.floor(bytes.length / 2);
            const flipped = Math.min(16, bytes.length - middle);
            for (let i = middle; i < middle + flipped; i++) bytes[i] ^= 0xff;
            c.update(value);
            done = { sha256: value.sha256, size: value.size, dataBytes: bytes.length, offset: middle, flipped };
          };
          tx.oncomplete = () => {
            db.close();
            resolve({ ...done, shardsInCache: count.result });
          };
          tx.onerror = () => reject(tx.error);
          tx.onabort = () => reject(tx.error || new Error("the transaction was aborted"));
        };
      }),
  );
}

async function runTests(context) {
  results.manifestShards = await manifestShards();
  save();
  let page = context.pages()[0] ?? (await context.newPage());
  watch(page, "demo");
  results.userAgent = await page.evaluate(() => navigator.userAgent);
  const only = new Set(args.only);
  let defaults = null;

  const firstOk = await phase("first", async (r) => {
    Object.assign(r, await openDemo(page, false));
    defaults = await formValues(page);
    r.formDefaults = defaults;
    r.generation = await generate(page, FIRST);
    if (!r.generation.generated) throw new Error(`no image: ${JSON.stringify(r.generation.error)}`);
    r.image = await saveNewestImage(page, "first.png");
    await page.waitForTimeout(500); // let the progress bar's CSS transition finish
    await page.screenshot({ path: path.join(args.out, "demo.png"), fullPage: true, timeout: T.short });
    r.screenshot = "demo.png";
    r.quickGeneration = await generate(page, QUICK);
    if (!r.quickGeneration.generated) throw new Error(`no quick image: ${JSON.stringify(r.quickGeneration.error)}`);
    r.quickImage = await saveNewestImage(page, "first_quick.png");
  });
  if (!firstOk) throw new Error("the first phase failed; the others depend on it");

  if (only.has("second")) {
    await phase("second", async (r) => {
      Object.assign(r, await openDemo(page, true));
      r.generation = await generate(page, QUICK);
      if (!r.generation.generated) throw new Error(`no image: ${JSON.stringify(r.generation.error)}`);
      r.image = await saveNewestImage(page, "second.png");
    });
  }

  if (only.has("corrupt")) {
    await phase("corrupt", async (r) => {
      r.corrupted = await corruptFirstCachedShard(page);
      const shard = results.manifestShards.find((s) => s.sha256 === r.corrupted.sha256);
      r.corrupted.path = shard ? shard.path : null;
      Object.assign(r, await openDemo(page, true));
      r.generation = await generate(page, QUICK);
      if (!r.generation.generated) throw new Error(`no image: ${JSON.stringify(r.generation.error)}`);
      r.image = await saveNewestImage(page, "corrupt.png");
    });
    const r = results.phases.corrupt;
    if (r.corrupted && r.requests) {
      const p = r.corrupted.path;
      r.corruptedRequests = p
        ? r.requests[p] || 0
        : Object.entries(r.requests)
            .filter(([k]) => k.endsWith(`${r.corrupted.sha256}.safetensors`))
            .reduce((s, [, n]) => s + n, 0);
      save();
    }
  }

  if (only.has("cancel")) {
    await phase("cancel", async (r) => {
      await waitState(page, ["ready"], T.load);
      await setForm(page, FIRST);
      await page.evaluate(() => {
        window.sdDemo.lastError = null;
      });
      const generationsBefore = await page.evaluate(() => window.sdDemo.generations);
      await page.click("#generate", { timeout: T.short });
      const seen = await (
        await page.waitForFunction(
          () => {
            const state = document.body.dataset.state;
            const status = document.getElementById("status")?.textContent ?? "";
            const m = /step\s+(\d+)/i.exec(status);
            const step = m ? parseInt(m[1], 10) : 0;
            if (state !== "generating") return { state, status, step, finished: true };
            return step >= 2 ? { state, status, step, finished: false } : false;
          },
          null,
          { timeout: T.generate, polling: 20 },
        )
      ).jsonValue();
      r.seenBeforeCancel = seen;
      if (seen.finished) throw new Error(`the generation ended before step 2 was seen: ${seen.status}`);
      const clicked = Date.now();
      await page.click("#cancel", { timeout: T.short });
      await waitState(page, ["ready"], T.generate);
      r.cancelToReadyMs = Date.now() - clicked;
      r.cancelError = await shownError(page);
      r.code = r.cancelError.lastError?.code ?? r.cancelError.code ?? null;
      r.generationsAfterCancel = (await page.evaluate(() => window.sdDemo.generations)) - generationsBefore;
      r.statusAfterCancel = await text(page, "#status");
      r.generation = await generate(page, QUICK);
      if (!r.generation.generated) throw new Error(`no image after the cancel: ${JSON.stringify(r.generation.error)}`);
      r.image = await saveNewestImage(page, "after_cancel.png");
    });
  }

  if (only.has("bad-input")) {
    await phase("bad-input", async (r) => {
      r.cases = [];
      const good = { ...FIRST, width: defaults.width, height: defaults.height };
      // A mask without an input image: set through the demo's hook, as painting needs an image.
      const maskAlone = async () => {
        await page.evaluate(() => window.sdDemo.clearInputImage());
        return setSquareMask(page);
      };
      for (const [field, fields, setup] of [
        ["width", { width: 30 }],
        ["steps", { steps: 0 }],
        ["sampler", { sampler: "unknown" }],
        ["mask", {}, maskAlone],
      ]) {
        const entry = { field, input: setup ? { ...fields, mask: "64x64, no input image" } : fields };
        r.cases.push(entry);
        try {
          await setForm(page, good);
          if (setup) entry.setup = await setup();
          const g = await generate(page, fields, T.short * 4);
          entry.generated = g.generated;
          entry.code = g.error.code ?? g.error.lastError?.code ?? null;
          entry.lastErrorCode = g.error.lastError?.code ?? null;
          entry.message = g.error.lastError?.message ?? null;
          entry.shown = g.error.text;
          entry.visible = g.error.visible;
        } catch (err) {
          entry.error = errorText(err);
        }
        if (setup) await page.evaluate(() => window.sdDemo.clearMask()).catch(() => {});
        save();
      }
      await setForm(page, good);
    });
  }

  const inputImageUrl = `${args.base}${INPUT_IMAGE_PATH}`;
  if (only.has("img2img")) {
    await phase("img2img", async (r) => {
      await waitState(page, ["ready"], T.load);
      r.input = await setInputImage(page, inputImageUrl);
      r.settings = IMG2IMG;
      r.generation = await generate(page, IMG2IMG);
      r.request = await page.evaluate(() => window.sdDemo.lastRequest);
      if (!r.generation.generated) throw new Error(`no image: ${JSON.stringify(r.generation.error)}`);
      r.image = await saveNewestImage(page, "img2img.png");
    });
  }

  if (only.has("inpaint")) {
    await phase("inpaint", async (r) => {
      await waitState(page, ["ready"], T.load);
      r.input = await setInputImage(page, inputImageUrl); // afresh: no mask from before
      r.maskSet = await setSquareMask(page);
      r.mask = await maskToSend(page, "inpaint_mask.png");
      r.settings = INPAINT;
      r.generation = await generate(page, INPAINT);
      r.request = await page.evaluate(() => window.sdDemo.lastRequest);
      if (!r.generation.generated) throw new Error(`no image: ${JSON.stringify(r.generation.error)}`);
      r.image = await saveNewestImage(page, "inpaint.png");
      await page.evaluate(() => window.sdDemo.clearInputImage());
    });
  }

  if (only.has("readme")) {
    // The demo's worker and GPU memory go before the example loads its own model.
    await page.close();
    page = null;
    await phase("readme", async (r) => {
      const res = await fetch(`${args.base}/pkg/README.md`, { signal: AbortSignal.timeout(T.short) });
      if (!res.ok) throw new Error(`GET /pkg/README.md: HTTP ${res.status}`);
      const readme = await res.text();
      const m = /```(?:js|javascript|mjs)[^\n]*\n([\s\S]*?)```/.exec(readme);
      if (!m) throw new Error("the package README has no ```js block");
      r.code = m[1];
      const html = `<!doctype html>
<html><head><meta charset="utf-8"><title>README example</title>
<script type="importmap">${JSON.stringify({ imports: { "sd-wgsl": "/pkg/index.js" } })}</script>
</head><body>
<script type="module">
${r.code}
</script>
</body></html>
`;
      const url = `${args.base}/readme-example.html`;
      const readmePage = await context.newPage();
      watch(readmePage, "readme");
      await readmePage.route(url, (route) =>
        route.fulfill({ status: 200, contentType: "text/html; charset=utf-8", body: html }),
      );
      let pageError = null;
      readmePage.on("pageerror", (err) => {
        pageError = pageError ?? err;
      });
      const started = Date.now();
      const response = await readmePage.goto(url, { timeout: T.navigate, waitUntil: "load" });
      if (!response?.ok()) throw new Error(`the example page did not load: HTTP ${response?.status()}`);
      const deadline = Date.now() + T.load + T.generate;
      for (;;) {
        if (pageError) throw new Error(`the example threw: ${pageError.message}`);
        const ready = await readmePage.evaluate(() => {
          const img = document.querySelector("body img");
          return !!img && img.complete && img.naturalWidth > 0;
        });
        if (ready) break;
        if (Date.now() > deadline) throw new Error("no loaded <img> in the body before the timeout");
        await new Promise((ok) => setTimeout(ok, 250));
      }
      r.ms = Date.now() - started;
      const got = await readmePage.evaluate(async () => window.__sdBytes(document.querySelector("body img").src));
      r.image = writeImage(got, "readme.png");
      await readmePage.close();
    });
  }
  if (only.has("arch")) {
    if (page) {
      await page.close();
      page = null;
    }
    await phase("arch", async (r) => {
      const res = await fetch(`${args.base}/arch/cases.json`, { signal: AbortSignal.timeout(T.short) });
      if (!res.ok) throw new Error(`GET /arch/cases.json: HTTP ${res.status}`);
      const cases = await res.json();
      const url = `${args.base}/arch-page.html`;
      const html = `<!doctype html>
<html><head><meta charset="utf-8"><title>architectures</title>
<script type="importmap">${JSON.stringify({ imports: { "sd-wgsl": "/pkg/index.js" } })}</script>
</head><body>
<script type="module">
import { StableDiffusion } from "sd-wgsl";
window.__arch = async (c) => {
  const sd = await StableDiffusion.load(c.manifest, { cache: false });
  try {
    const latents = new Float32Array(await (await fetch(c.latents)).arrayBuffer());
    const [image] = await sd.generate({ ...c.request, initialLatents: latents });
    return await window.__sdBytes(URL.createObjectURL(image.blob));
  } finally {
    await sd.dispose();
  }
};
window.__archReady = true;
</script>
</body></html>
`;
      const archPage = await context.newPage();
      watch(archPage, "arch");
      await archPage.route(url, (route) =>
        route.fulfill({ status: 200, contentType: "text/html; charset=utf-8", body: html }),
      );
      await archPage.goto(url, { timeout: T.navigate, waitUntil: "load" });
      await archPage.waitForFunction(() => window.__archReady === true, null, { timeout: T.load, polling: 100 });
      r.cases = {};
      for (const c of cases) {
        const started = Date.now();
        const got = await archPage.evaluate((c) => window.__arch(c), c);
        r.cases[c.name] = { ms: Date.now() - started, image: writeImage(got, `arch-${c.name}.png`) };
        save();
      }
      await archPage.close();
    });
  }
  if (only.has("limits")) {
    await phase("limits", async (r) => {
      const foreign = "https://models.example/digits/manifest.json";
      const manifestText = await (
        await fetch(`${args.base}/models/digits/manifest.json`, { signal: AbortSignal.timeout(T.short) })
      ).text();
      const linkPage = await context.newPage();
      watch(linkPage, "limits");
      r.foreignRequests = [];
      await linkPage.route("https://models.example/**", (route) => {
        const url = route.request().url();
        r.foreignRequests.push(url);
        if (url.endsWith("manifest.json")) {
          return route.fulfill({
            status: 200,
            contentType: "application/json",
            headers: { "Access-Control-Allow-Origin": "*" },
            body: manifestText,
          });
        }
        return route.fulfill({ status: 404, body: "" });
      });
      const dialog = new Promise((resolve) =>
        linkPage.once("dialog", async (d) => {
          const message = d.message();
          await d.dismiss();
          resolve(message);
        }),
      );
      await linkPage.goto(`${args.base}/?model=${encodeURIComponent(foreign)}`, {
        timeout: T.navigate,
        waitUntil: "load",
      });
      r.dialog = await Promise.race([dialog, new Promise((resolve) => setTimeout(() => resolve(null), T.load))]);
      await linkPage.waitForFunction(
        () => /not loaded/.test(document.getElementById("status")?.textContent ?? ""),
        null,
        { timeout: T.short, polling: 50 },
      );
      r.status = await text(linkPage, "#status");
      save();
      r.checks = await linkPage.evaluate(async (base) => {
        const sd = await import(`${base}/pkg/index.js`);
        const out = {};
        const hash = "0".repeat(64);
        const bomb = {
          format: "sd-wgsl-web-model",
          version: 1,
          name: "bomb",
          files: { "unet/config.json": "{}", "vae/config.json": "{}" },
          shards: [{ file: `${hash}.safetensors`, component: "unet", size: 4 * 2 ** 30, sha256: hash }],
          tensors: [],
        };
        try {
          await sd.StableDiffusion.load(`data:application/json,${encodeURIComponent(JSON.stringify(bomb))}`);
          out.bombManifest = "loaded";
        } catch (e) {
          out.bombManifest = { code: e.code ?? null, message: e.message };
        }
        // A PNG whose header claims 16384x16384 (and which has no pixel data at all).
        const huge = new Uint8Array([
          0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52,
          0, 0, 0x40, 0, 0, 0, 0x40, 0, 8, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44,
          0xae, 0x42, 0x60, 0x82,
        ]);
        out.hugeHeader = await sd.imageHeaderSize(new Blob([huge], { type: "image/png" }));
        const canvas = new OffscreenCanvas(37, 23);
        const ctx = canvas.getContext("2d");
        ctx.fillStyle = "#c33";
        ctx.fillRect(0, 0, 37, 23);
        out.encoded = {};
        for (const type of ["image/png", "image/jpeg", "image/webp"]) {
          out.encoded[type] = await sd.imageHeaderSize(await canvas.convertToBlob({ type }));
        }
        try {
          await window.sdDemo.setInputImage(new Blob([huge], { type: "image/png" }), "huge.png");
          out.demoHugeImage = "accepted";
        } catch (e) {
          out.demoHugeImage = { code: e.code ?? null, message: e.message };
        }
        return out;
      }, args.base);
      await linkPage.close();
    });
  }

  if (only.has("no-webgpu")) {
    await phase("no-webgpu", async (r) => {
      // The same Chromium without --enable-unsafe-webgpu has no adapter: the demo must fall back
      // to the CPU module, say so, and still draw the prompt; an explicit device: "webgpu" must
      // reject with NO_WEBGPU.
      const browser = await chromium.launch({
        executablePath: results.chromium,
        headless: true,
        args: CHROMIUM_ARGS.filter((a) => a !== "--enable-unsafe-webgpu"),
        timeout: T.launch,
      });
      try {
        const plain = await browser.newPage();
        await plain.addInitScript(INIT_SCRIPT);
        watch(plain, "no-webgpu");
        const before = await requests();
        r.open = await openDemo(plain, false);
        r.wasmFetched = Object.keys(diffRequests(before, await requests())).filter((p) => p.endsWith(".wasm"));
        r.notice = await plain.evaluate(() => {
          const notice = document.getElementById("cpu-notice");
          const banner = document.getElementById("no-webgpu");
          return {
            visible: !!notice && !notice.hidden && notice.offsetParent !== null,
            text: notice?.textContent?.replace(/\s+/g, " ").trim() ?? null,
            noWebgpuBannerVisible: !!banner && !banner.hidden && banner.offsetParent !== null,
            meta: document.getElementById("model-meta")?.textContent ?? null,
          };
        });
        r.generation = await generate(plain, FIRST);
        if (!r.generation.generated) throw new Error(`no image on the CPU: ${JSON.stringify(r.generation.error)}`);
        r.image = await saveNewestImage(plain, "no-webgpu.png");
        r.explicitWebgpu = await plain.evaluate(async (url) => {
          const { StableDiffusion } = await import("/pkg/index.js");
          try {
            const sd = await StableDiffusion.load(url, { device: "webgpu" });
            await sd.dispose();
            return { code: null };
          } catch (error) {
            return { code: error?.code ?? null, message: String(error?.message ?? error) };
          }
        }, `${args.base}/models/digits/manifest.json`);
        r.badDevice = await plain.evaluate(async (url) => {
          const { StableDiffusion } = await import("/pkg/index.js");
          try {
            await StableDiffusion.load(url, { device: "tpu" });
            return { code: null };
          } catch (error) {
            return { code: error?.code ?? null, field: error?.field ?? null, message: String(error?.message ?? error) };
          }
        }, `${args.base}/models/digits/manifest.json`);
      } finally {
        await browser.close().catch(() => {});
      }
    });
  }
}

// ───────────────────────── bench ─────────────────────────

const BENCH_PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>sd-wgsl bench</title></head><body>
<script type="module">
const out = {};
const stage = (name) => { window.__benchStage = name; };
try {
  stage("import");
  const q = new URLSearchParams(location.search);
  const request = JSON.parse(q.get("request"));
  const reps = Number(q.get("reps")) || 1;
  const { StableDiffusion } = await import("/pkg/index.js");
  const manifest = new URL("/models/digits/manifest.json", location.href).href;
  const log = async () => (await fetch("/__requests")).json();
  const shardRequests = (a, b) => Object.entries(b.paths)
    .filter(([p]) => p.endsWith(".safetensors"))
    .reduce((s, [p, n]) => s + n - (a.paths[p] || 0), 0);
  const now = () => performance.now();
  const load = async () => {
    let last = null;
    const before = await log();
    const t = now();
    const sd = await StableDiffusion.load(manifest, { onProgress: (p) => { last = p; } });
    const ms = now() - t;
    return { sd, ms, fromCache: last?.fromCache ?? null, shardsTotal: last?.shardsTotal ?? null,
             totalBytes: last?.totalBytes ?? null, shardRequests: shardRequests(before, await log()) };
  };

  stage("cold load");
  const cold = await load();
  let sd = cold.sd;
  out.info = JSON.parse(JSON.stringify(sd.info));
  out.cold = { ms: cold.ms, fromCache: cold.fromCache, shardsTotal: cold.shardsTotal,
               totalBytes: cold.totalBytes, shardRequests: cold.shardRequests };
  const req = { ...request, width: sd.info.nativeWidth, height: sd.info.nativeHeight };
  out.request = req;
  stage("warm-up generation");
  let t = now();
  await sd.generate(req);
  out.warmupMs = now() - t;
  out.generateMs = [];
  for (let i = 0; i < reps; i++) {
    stage("timed generation " + (i + 1) + " of " + reps);
    t = now();
    await sd.generate(req);
    out.generateMs.push(now() - t);
  }
  stage("dispose");
  await sd.dispose();
  stage("cached load");
  const cached = await load();
  out.cached = { ms: cached.ms, fromCache: cached.fromCache, shardsTotal: cached.shardsTotal,
                 infoCached: cached.sd.info.cached, shardRequests: cached.shardRequests };
  await cached.sd.dispose();
} catch (e) {
  out.error = (e && e.code ? e.code + ": " : "") + (e && e.message ? e.message : String(e));
  out.stack = e && e.stack ? e.stack : null;
}
window.__bench = out;
</script>
</body></html>
`;

async function runBench(context) {
  const page = context.pages()[0] ?? (await context.newPage());
  watch(page, "bench");
  results.userAgent = await page.evaluate(() => navigator.userAgent);
  const url = `${args.base}/bench.html`;
  // A predicate, not the URL: the page's URL carries a query string.
  await page.route(
    (u) => u.pathname === "/bench.html",
    (route) => route.fulfill({ status: 200, contentType: "text/html; charset=utf-8", body: BENCH_PAGE }),
  );
  const request = { prompt: PROMPT, seed: 7, sampler: "euler_a", steps: 20, guidanceScale: 5 };
  const query = new URLSearchParams({ request: JSON.stringify(request), reps: String(args.reps) });
  const response = await page.goto(`${url}?${query}`, { timeout: T.navigate, waitUntil: "load" });
  if (!response?.ok()) throw new Error(`the bench page did not load: HTTP ${response?.status()}`);
  // Poll, printing each stage as it starts, so a slow or stuck step shows where it is.
  const deadline = Date.now() + T.load * 2 + T.generate * (2 + args.reps);
  let last = null;
  for (;;) {
    const now = await page.evaluate(() => ({ done: window.__bench ?? null, stage: window.__benchStage ?? null }));
    if (now.stage !== last) {
      last = now.stage;
      results.benchStage = last;
      log(`bench: ${last}`);
      save();
    }
    if (now.done) {
      results.bench = now.done;
      break;
    }
    if (Date.now() > deadline) throw new Error(`the bench page timed out during: ${last}`);
    await new Promise((ok) => setTimeout(ok, 250));
  }
  if (results.bench.error) throw new Error(`the bench page failed: ${results.bench.error}`);
}

// ───────────────────────── main ─────────────────────────

async function main() {
  save();
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "sd-wgsl-chromium-"));
  let context = null;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: results.chromium,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 900 },
      timeout: T.launch,
    });
    await context.addInitScript(INIT_SCRIPT);
    if (args.mode === "bench") await runBench(context);
    else await runTests(context);
    results.ok = Object.values(results.phases).every((p) => p.ok);
  } catch (err) {
    results.error = errorText(err);
    log(`failed: ${results.error}`);
  } finally {
    results.finishedAt = new Date().toISOString();
    save();
    if (context) await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  log(`${results.ok ? "done" : "FAILED"}: ${resultsFile}`);
  process.exit(results.ok ? 0 : 1);
}

main();
