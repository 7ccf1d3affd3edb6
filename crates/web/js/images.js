// The input images of img2img and inpainting (`initImage`, `mask`): whatever the caller passes,
// turned into the ImageData-like { width, height, data } (RGBA bytes) the wasm module takes.
//
// Two steps, because a module worker cannot receive DOM objects:
// - `prepareImages` (the page, before postMessage): URLs are fetched into Blobs, and DOM images
//   and canvases are read into ImageData; ImageData, Blob, ImageBitmap and pixel objects go as
//   they are (all structured-cloneable).
// - `decodeImages` (where the engine runs): everything left becomes { width, height, data }.
// With { worker: false } the engine does both in one go.

import { SdError, abortedError, invalidRequest, toSdError } from "./errors.js";

/** The request fields that hold images, in the order they are checked. */
export const IMAGE_FIELDS = Object.freeze(["initImage", "mask"]);

/** The widest and tallest input image read (as the native server: a few kilobytes of PNG can
 * claim gigapixels, so encoded images are checked by their header before they are decoded). */
export const MAX_IMAGE_SIDE = 4096;

/** How far into a file its size is looked for (a JPEG's frame header can follow large EXIF). */
const HEADER_BYTES = 1 << 20;

/**
 * The size an encoded image declares in its header (PNG, JPEG, WebP, GIF or BMP), without
 * decoding it: `{ width, height, format }`, or null for another format or a header that does
 * not say.
 */
export async function imageHeaderSize(blob) {
  const bytes = new Uint8Array(await blob.slice(0, HEADER_BYTES).arrayBuffer());
  return headerSize(bytes);
}

function headerSize(b) {
  const be16 = (i) => (b[i] << 8) | b[i + 1];
  const le16 = (i) => b[i] | (b[i + 1] << 8);
  const be32 = (i) => ((b[i] << 24) >>> 0) + ((b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]);
  const le24 = (i) => b[i] | (b[i + 1] << 8) | (b[i + 2] << 16);
  const ascii = (i, text) => [...text].every((c, k) => b[i + k] === c.charCodeAt(0));
  if (b.length >= 24 && b[0] === 0x89 && ascii(1, "PNG") && ascii(12, "IHDR")) {
    return { width: be32(16), height: be32(20), format: "png" };
  }
  if (b.length >= 10 && ascii(0, "GIF8")) return { width: le16(6), height: le16(8), format: "gif" };
  if (b.length >= 26 && ascii(0, "BM")) {
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    return { width: Math.abs(dv.getInt32(18, true)), height: Math.abs(dv.getInt32(22, true)), format: "bmp" };
  }
  if (b.length >= 30 && ascii(0, "RIFF") && ascii(8, "WEBP")) {
    if (ascii(12, "VP8 ") && b[23] === 0x9d && b[24] === 0x01 && b[25] === 0x2a) {
      return { width: le16(26) & 0x3fff, height: le16(28) & 0x3fff, format: "webp" };
    }
    if (ascii(12, "VP8L") && b[20] === 0x2f) {
      const bits = b[21] | (b[22] << 8) | (b[23] << 16) | (b[24] << 24);
      return { width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1, format: "webp" };
    }
    if (ascii(12, "VP8X")) return { width: le24(24) + 1, height: le24(27) + 1, format: "webp" };
    return null;
  }
  if (b.length >= 4 && b[0] === 0xff && b[1] === 0xd8) {
    // JPEG: walk the segments to the first frame header (SOF0..SOF15 but DHT, JPG, DAC).
    let i = 2;
    while (i + 9 < b.length && b[i] === 0xff) {
      const marker = b[i + 1];
      if (marker === 0xff) {
        i += 1; // fill byte
        continue;
      }
      if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd8)) {
        i += 2; // no length
        continue;
      }
      if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
        return { width: be16(i + 7), height: be16(i + 5), format: "jpeg" };
      }
      i += 2 + be16(i + 2);
    }
  }
  return null;
}

/** Refuses an image over MAX_IMAGE_SIDE, naming `field`. */
export function checkImageSide(width, height, field) {
  if (width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE) {
    throw invalidRequest(
      field,
      `the image is ${width}x${height} pixels; the largest allowed is ${MAX_IMAGE_SIDE}x${MAX_IMAGE_SIDE}`,
    );
  }
}

const GENERATION = "Generation";
const ACCEPTED =
  "an ImageData, a Blob or File, a URL (string or URL), an ImageBitmap, an <img>, a <canvas> or an " +
  "OffscreenCanvas, or { width, height, data } with RGBA bytes";

function tagOf(value) {
  return Object.prototype.toString.call(value).slice(8, -1);
}

function isPixelObject(value) {
  return value !== null && typeof value === "object" && "data" in value && "width" in value && "height" in value;
}

// Drawn onto a 2D canvas to read their pixels.
const DRAWABLE = new Set([
  "HTMLImageElement",
  "SVGImageElement",
  "HTMLCanvasElement",
  "OffscreenCanvas",
  "HTMLVideoElement",
  "ImageBitmap",
  "VideoFrame",
]);

/** What kind of input `value` is, or throws INVALID_REQUEST naming `field`. */
function kindOf(value, field) {
  if (typeof value === "string") {
    if (value.trim() === "") throw invalidRequest(field, "an empty string is not an image URL");
    return "url";
  }
  const tag = tagOf(value);
  if (tag === "URL") return "url";
  if (tag === "ImageData") return "pixels";
  if (tag === "Blob" || tag === "File") return "blob";
  if (DRAWABLE.has(tag)) return "drawable";
  if (isPixelObject(value)) return "pixels";
  let what = tag === "Object" ? "an object" : `a ${tag}`;
  if (typeof value !== "object") what = `a ${typeof value}`;
  else if (Array.isArray(value)) what = "an array";
  throw invalidRequest(field, `must be ${ACCEPTED}; got ${what}`);
}

/**
 * Checks the image fields of `request` without reading them: their types, and that a mask comes
 * with an initImage. Throws INVALID_REQUEST naming the field. Returns the fields that are set
 * (undefined and null mean none).
 */
export function checkImages(request) {
  const present = {};
  for (const field of IMAGE_FIELDS) {
    const value = request[field];
    if (value === undefined || value === null) continue;
    kindOf(value, field);
    present[field] = value;
  }
  if (present.mask !== undefined && present.initImage === undefined) {
    throw invalidRequest("mask", "a mask needs an initImage: it marks which parts of initImage to repaint");
  }
  return present;
}

function resolveUrl(value, field) {
  const base = globalThis.document?.baseURI ?? globalThis.location?.href;
  try {
    return new URL(String(value), base).href;
  } catch {
    throw invalidRequest(field, `not a valid URL: ${String(value)}`);
  }
}

async function fetchBlob(value, field, signal) {
  const url = resolveUrl(value, field);
  let response;
  try {
    response = await fetch(url, { signal });
  } catch (error) {
    if (signal?.aborted) throw abortedError(GENERATION);
    const failure = toSdError(error, { url, what: GENERATION });
    throw new SdError(`${field}: ${failure.message}`, failure.code, { cause: error, field });
  }
  if (!response.ok) {
    const status = `${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
    throw invalidRequest(field, `could not download ${url}: the server answered HTTP ${status}`);
  }
  try {
    return await response.blob();
  } catch (error) {
    if (signal?.aborted) throw abortedError(GENERATION);
    throw invalidRequest(field, `could not download ${url}: ${error?.message ?? error}`, { cause: error });
  }
}

/** A 2D context of a `width` x `height` canvas, off-screen where the platform allows. */
function context2d(width, height, field) {
  if (typeof OffscreenCanvas === "function") {
    const ctx = new OffscreenCanvas(width, height).getContext("2d", { willReadFrequently: true });
    if (ctx) return ctx;
  }
  const document = globalThis.document;
  if (document) {
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    if (ctx) return ctx;
  }
  throw new SdError(
    `${field}: this browser cannot read image pixels here (no OffscreenCanvas in workers): pass an ImageData, ` +
      "or load the model with { worker: false }",
    "INVALID_REQUEST",
    { field },
  );
}

function sourceSize(source) {
  const width = source.naturalWidth || source.videoWidth || source.displayWidth || source.width;
  const height = source.naturalHeight || source.videoHeight || source.displayHeight || source.height;
  // SVGImageElement's width is an SVGAnimatedLength.
  return { width: Number(width?.baseVal?.value ?? width), height: Number(height?.baseVal?.value ?? height) };
}

/** Reads the pixels of anything drawImage takes. */
async function readDrawable(source, field) {
  const tag = tagOf(source);
  if (tag === "HTMLImageElement" && !source.complete) {
    try {
      await source.decode();
    } catch (error) {
      throw invalidRequest(field, `the <img> (${source.currentSrc || source.src || "no src"}) could not be loaded`, {
        cause: error,
      });
    }
  }
  const { width, height } = sourceSize(source);
  if (!(width > 0 && height > 0)) {
    throw invalidRequest(field, `the ${tag} has no pixels (${width}x${height}): is it loaded?`);
  }
  checkImageSide(width, height, field);
  const ctx = context2d(width, height, field);
  try {
    ctx.drawImage(source, 0, 0, width, height);
    return ctx.getImageData(0, 0, width, height);
  } catch (error) {
    if (error?.name === "SecurityError") {
      throw invalidRequest(
        field,
        "the image comes from another origin without CORS, so its pixels cannot be read: serve it with " +
          'Access-Control-Allow-Origin and set crossOrigin = "anonymous" on the <img>, or pass a Blob',
        { cause: error },
      );
    }
    if (error?.name === "InvalidStateError") {
      throw invalidRequest(field, `the ${tag} cannot be read (closed, detached or not decoded)`, { cause: error });
    }
    throw invalidRequest(field, `cannot read the ${tag}'s pixels: ${error?.message ?? error}`, { cause: error });
  }
}

/** Decodes an encoded image (PNG, JPEG, WebP, ...) as its bytes say, without colour conversion. */
async function decodeBlob(blob, field) {
  if (typeof createImageBitmap !== "function") {
    throw invalidRequest(field, "this browser cannot decode images here (no createImageBitmap): pass an ImageData");
  }
  // The declared size first: a small file can claim gigapixels.
  const declared = await imageHeaderSize(blob);
  if (declared) checkImageSide(declared.width, declared.height, field);
  let bitmap;
  try {
    // As the native surfaces decode: the stored values, no colour management, no premultiplying.
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch (error) {
    const type = blob.type ? ` (${blob.type}, ${blob.size} bytes)` : ` (${blob.size} bytes)`;
    throw invalidRequest(field, `not an image this browser can decode${type}: use PNG, JPEG or WebP`, {
      cause: error,
    });
  }
  try {
    return await readDrawable(bitmap, field);
  } finally {
    bitmap.close();
  }
}

/** Checks an ImageData-like value. */
function checkPixels(value, field) {
  const { width, height, data } = value;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
    throw invalidRequest(field, `width and height must be positive whole numbers, got ${width}x${height}`);
  }
  checkImageSide(width, height, field);
  const tag = tagOf(data);
  if (tag !== "Uint8ClampedArray" && tag !== "Uint8Array") {
    throw invalidRequest(field, `data must be a Uint8ClampedArray or Uint8Array of RGBA bytes, got ${tagOf(data)}`);
  }
  if (data.length !== width * height * 4) {
    throw invalidRequest(
      field,
      `data must hold width * height * 4 = ${width * height * 4} RGBA bytes for ${width}x${height}, got ${data.length}`,
    );
  }
  return { width, height, data };
}

// A mask is read by its brightness (white = repaint); transparent parts count as black (keep),
// so a mask painted on a transparent layer means what it shows. Opaque masks are left alone.
function flattenMask(pixels) {
  const { width, height, data } = pixels;
  let opaque = true;
  for (let i = 3; i < data.length; i += 4) {
    if (data[i] !== 255) {
      opaque = false;
      break;
    }
  }
  if (opaque) return pixels;
  const out = new Uint8ClampedArray(data.length);
  for (let i = 0; i < data.length; i += 4) {
    const a = data[i + 3];
    out[i] = Math.round((data[i] * a) / 255);
    out[i + 1] = Math.round((data[i + 1] * a) / 255);
    out[i + 2] = Math.round((data[i + 2] * a) / 255);
    out[i + 3] = 255;
  }
  return { width, height, data: out };
}

/**
 * The page's half: makes each image field postable to the worker. Returns a copy of `request`
 * (or `request` itself when it holds no images).
 */
export async function prepareImages(request, signal) {
  if (request === null || typeof request !== "object" || Array.isArray(request)) return request;
  const present = checkImages(request);
  if (Object.keys(present).length === 0) return request;
  const out = { ...request };
  for (const [field, value] of Object.entries(present)) {
    const kind = kindOf(value, field);
    if (kind === "url") out[field] = await fetchBlob(value, field, signal);
    else if (kind === "drawable" && tagOf(value) !== "ImageBitmap") out[field] = await readDrawable(value, field);
    if (signal?.aborted) throw abortedError(GENERATION);
  }
  return out;
}

/**
 * The engine's half: { initImage?, mask? } as { width, height, data } each, or undefined when
 * the request has neither. Rejects with INVALID_REQUEST naming the field.
 */
export async function decodeImages(images, signal) {
  const inputs = {};
  for (const field of IMAGE_FIELDS) {
    const value = images?.[field];
    if (value === undefined || value === null) continue;
    let pixels;
    switch (kindOf(value, field)) {
      case "url":
        pixels = await decodeBlob(await fetchBlob(value, field, signal), field);
        break;
      case "blob":
        pixels = await decodeBlob(value, field);
        break;
      case "drawable":
        pixels = await readDrawable(value, field);
        break;
      default:
        pixels = value;
    }
    if (signal?.aborted) throw abortedError(GENERATION);
    pixels = checkPixels(pixels, field);
    inputs[field] = field === "mask" ? flattenMask(pixels) : pixels;
  }
  return Object.keys(inputs).length ? inputs : undefined;
}
