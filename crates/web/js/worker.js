// The module worker that runs the engine off the page's main thread.
// Requests:  { id, type: "load", manifestUrl, cache, device } | { id, type: "generate", request }
//            (request.initImage / request.mask: ImageData, Blob, ImageBitmap or pixel objects,
//            as index.js prepared them; decoded here)
//            | { id, type: "dispose" } | { id, type: "cancel" }  (id: the load/generate to cancel)
// Replies:   { id, type: "progress", progress } | { id, type: "result", value }
//            | { id, type: "error", error: { name, code, message } }

import { Engine } from "./engine.js";
import { SdError, serializeError } from "./errors.js";

let engine = null;
let loading = false;
const running = new Map(); // id -> AbortController of a load or generate not yet answered

const handlers = {
  async load({ manifestUrl, cache, device }, signal, onProgress) {
    if (engine || loading) throw new SdError("This worker already holds a model.", "INTERNAL");
    loading = true;
    try {
      engine = await Engine.load(manifestUrl, { cache, signal, onProgress, device });
      return engine.info;
    } finally {
      loading = false;
    }
  },

  generate({ request }, signal, onProgress) {
    if (!engine) throw new SdError("No model is loaded in this worker.", "DISPOSED");
    return engine.generate(request, { signal, onProgress });
  },

  async dispose() {
    await engine?.dispose();
  },
};

function post(message) {
  try {
    self.postMessage(message);
  } catch (error) {
    // A value that cannot be cloned must still answer its caller.
    self.postMessage({ id: message.id, type: "error", error: serializeError(error) });
  }
}

async function handle(id, type, data) {
  const controller = new AbortController();
  running.set(id, controller);
  const onProgress = (progress) => post({ id, type: "progress", progress });
  try {
    const value = await handlers[type](data, controller.signal, onProgress);
    post({ id, type: "result", value });
  } catch (error) {
    post({ id, type: "error", error: serializeError(error) });
  } finally {
    running.delete(id);
  }
}

self.addEventListener("message", ({ data }) => {
  const { id, type } = data ?? {};
  if (type === "cancel") {
    running.get(id)?.abort();
  } else if (Object.hasOwn(handlers, type)) {
    handle(id, type, data);
  } else {
    post({ id, type: "error", error: serializeError(new SdError(`Unknown request type: ${type}`, "INTERNAL")) });
  }
});
