// The IndexedDB model cache. Schema (fixed; see the package README):
//   database "sd-wgsl", version 1
//   "shards": keyPath "sha256", values { sha256, size, data: ArrayBuffer }
//   "models": keyPath "url" (absolute manifest URL), values { url, name, shards: sha256[], bytes, savedAt }
// Works in a window and in a worker. Without IndexedDB (or when it refuses to open, as in some
// private modes) it behaves as an empty cache that cannot store.

import { SdError, isQuotaError } from "./errors.js";

export const DB_NAME = "sd-wgsl";
export const DB_VERSION = 1;
export const SHARDS = "shards";
export const MODELS = "models";

let opening = null;

/** The open database, or null when this context has no usable IndexedDB. */
export function open() {
  opening ??= openDatabase().catch(() => {
    opening = null; // a later call may succeed (e.g. after a blocked upgrade resolves)
    return null;
  });
  return opening;
}

function openDatabase() {
  return new Promise((resolve, reject) => {
    const idb = globalThis.indexedDB;
    if (!idb) {
      resolve(null);
      return;
    }
    const request = idb.open(DB_NAME, DB_VERSION);
    request.onupgradeneeded = () => createStores(request.result);
    request.onsuccess = () => resolve(watch(request.result));
    request.onerror = () => reject(request.error);
  });
}

function createStores(db) {
  if (!db.objectStoreNames.contains(SHARDS)) db.createObjectStore(SHARDS, { keyPath: "sha256" });
  if (!db.objectStoreNames.contains(MODELS)) db.createObjectStore(MODELS, { keyPath: "url" });
}

// Let another tab upgrade or delete the database, and reopen next time instead of using a
// closed connection.
function watch(db) {
  const forget = () => {
    opening = null;
  };
  db.onversionchange = () => {
    db.close();
    forget();
  };
  db.onclose = forget;
  return db;
}

/**
 * Runs `body(tx)` in one transaction and resolves when it has committed, with the value of the
 * function `body` returned (if any). Rejects with the transaction's error: the failing
 * request's, or the commit's (a quota error can surface either way).
 */
function transact(db, storeNames, mode, body) {
  return new Promise((resolve, reject) => {
    let tx;
    let read;
    try {
      // Relaxed durability: this is a cache, a lost write only means a download next time.
      tx = db.transaction(storeNames, mode, { durability: "relaxed" });
      tx.oncomplete = () => resolve(read?.());
      // A failed request aborts the transaction with its error, so the abort carries every cause.
      tx.onabort = () => reject(tx.error ?? new Error("The cache transaction was aborted."));
      read = body(tx);
    } catch (error) {
      try {
        tx?.abort();
      } catch {
        // already finished
      }
      reject(error);
    }
  });
}

function isArrayBuffer(value) {
  return Object.prototype.toString.call(value) === "[object ArrayBuffer]";
}

// An ArrayBuffer holding exactly these bytes, copied only when the view does not span its buffer.
function exactBuffer(data) {
  if (isArrayBuffer(data)) return data;
  if (ArrayBuffer.isView(data)) {
    const { buffer, byteOffset, byteLength } = data;
    if (byteOffset === 0 && byteLength === buffer.byteLength && isArrayBuffer(buffer)) return buffer;
    return buffer.slice(byteOffset, byteOffset + byteLength);
  }
  throw new TypeError("shard data must be an ArrayBuffer or a typed array");
}

/** The stored bytes of a shard, or null when it is not cached (or not stored as bytes). */
export async function getShard(sha256) {
  const db = await open();
  if (!db) return null;
  const record = await transact(db, SHARDS, "readonly", (tx) => {
    const request = tx.objectStore(SHARDS).get(sha256);
    return () => request.result;
  });
  const data = record?.data;
  if (isArrayBuffer(data)) return data;
  return ArrayBuffer.isView(data) ? exactBuffer(data) : null;
}

/**
 * Stores a shard. Resolves true when stored, false when there is no cache to store into.
 * Throws an SdError with code "QUOTA" when browser storage is full.
 */
export async function putShard(sha256, data) {
  const db = await open();
  if (!db) return false;
  const buffer = exactBuffer(data);
  try {
    await transact(db, SHARDS, "readwrite", (tx) => {
      tx.objectStore(SHARDS).put({ sha256, size: buffer.byteLength, data: buffer });
    });
  } catch (error) {
    if (!isQuotaError(error)) throw error;
    throw new SdError(
      `Browser storage is full: could not cache shard ${sha256} (${mib(buffer.byteLength)}).`,
      "QUOTA",
      { cause: error },
    );
  }
  return true;
}

export async function deleteShard(sha256) {
  const db = await open();
  if (!db) return;
  await transact(db, SHARDS, "readwrite", (tx) => {
    tx.objectStore(SHARDS).delete(sha256);
  });
}

/**
 * Records a model whose shards are all cached. Resolves true when stored, false without a cache;
 * throws an SdError "QUOTA" when storage is full.
 */
export async function putModel({ url, name, shards, bytes }) {
  const db = await open();
  if (!db) return false;
  const record = { url: absoluteUrl(url), name, shards: [...shards], bytes, savedAt: Date.now() };
  try {
    await transact(db, MODELS, "readwrite", (tx) => {
      tx.objectStore(MODELS).put(record);
    });
  } catch (error) {
    if (!isQuotaError(error)) throw error;
    throw new SdError("Browser storage is full: could not record the cached model.", "QUOTA", { cause: error });
  }
  return true;
}

/** The cached models, newest first. */
export async function listCachedModels() {
  const db = await open();
  if (!db) return [];
  const records = await transact(db, MODELS, "readonly", (tx) => {
    const request = tx.objectStore(MODELS).getAll();
    return () => request.result;
  });
  return records
    .map(({ url, name, shards, bytes, savedAt }) => ({
      url,
      name: name ?? "",
      bytes: Number(bytes) || 0,
      shards: shardList({ shards }).length,
      savedAt: Number(savedAt) || 0,
    }))
    .sort((a, b) => b.savedAt - a.savedAt);
}

/** Forgets a cached model and drops its shards, except those another cached model lists. */
export async function deleteCachedModel(url) {
  const db = await open();
  if (!db) return;
  const key = absoluteUrl(url);
  // One transaction over both stores, so a model saved meanwhile cannot lose a shard it shares.
  await transact(db, [MODELS, SHARDS], "readwrite", (tx) => {
    const models = tx.objectStore(MODELS);
    const all = models.getAll();
    all.onsuccess = () => {
      const target = all.result.find((model) => model.url === key);
      if (!target) return;
      const kept = new Set(all.result.filter((model) => model !== target).flatMap(shardList));
      models.delete(key);
      const shards = tx.objectStore(SHARDS);
      for (const sha of shardList(target)) if (!kept.has(sha)) shards.delete(sha);
    };
  });
}

function shardList(model) {
  return Array.isArray(model?.shards) ? model.shards : [];
}

// Keys are absolute URLs; a relative one resolves against the document (or worker) like fetch does.
function absoluteUrl(url) {
  const base = globalThis.document?.baseURI ?? globalThis.location?.href;
  return new URL(String(url), base).href;
}

function mib(bytes) {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
