// Talking to the edge: one WebSocket (/ws) that reconnects by itself with backoff, and the
// HTTP endpoints (/api/predict, /api/correct) whenever the socket is not open.

const HTTP_PATHS = { predict: "api/predict", correct: "api/correct" };
const ANSWER_TYPES = { predict: "prediction", correct: "corrected" };
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 5000;
const REQUEST_TIMEOUT_MS = { predict: 5000, correct: 10000 };

/** An error as the wire protocol shapes it: {"code", "message"}. */
export class WireError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

function wsUrl() {
  const url = new URL("ws", window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

export class Connection {
  /**
   * onState(state, detail): state is "connecting", "open" or "closed" (detail.retryMs then says
   * when the next try is).
   */
  constructor({ onState } = {}) {
    this.onState = onState || (() => {});
    this.ws = null;
    this.seq = 0;
    this.pending = new Map(); // seq -> {resolve, reject, timer, type}
    this.attempt = 0;
    this.retryTimer = null;
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Open the socket, and keep reopening it whenever it drops. */
  start() {
    window.addEventListener("online", () => this.retryNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.retryNow();
    });
    this.#connect();
  }

  /** Skip the rest of the backoff wait and try to connect now. */
  retryNow() {
    if (this.ws !== null || this.retryTimer === null) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.#connect();
  }

  /**
   * Send a "predict" or "correct" message; returns {seq, answer} where answer is a promise of
   * the reply body (without "type"/"seq") that rejects with a WireError.
   */
  request(type, body) {
    const seq = ++this.seq;
    if (!this.open) return { seq, answer: this.#viaHttp(type, body), via: "http" };
    // Both messages may be sent twice (a correction repeated with the same label is stored
    // once), so one that the dropped socket left unanswered is sent again over HTTP.
    const answer = this.#viaSocket(type, seq, body).catch((err) => {
      if (err.code === "connection_lost") return this.#viaHttp(type, body);
      throw err;
    });
    return { seq, answer, via: "ws" };
  }

  #connect() {
    this.retryTimer = null;
    this.onState("connecting", {});
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (err) {
      this.#scheduleRetry();
      return;
    }
    this.ws = ws;
    ws.addEventListener("open", () => {
      this.attempt = 0;
      this.onState("open", {});
    });
    ws.addEventListener("message", (e) => this.#onMessage(e));
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.#failPending(new WireError("connection_lost", "The connection dropped before the answer came."));
      this.#scheduleRetry();
    });
  }

  #scheduleRetry() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.#connect(), delay);
    this.onState("closed", { retryMs: delay });
  }

  #onMessage(e) {
    if (typeof e.data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(e.data);
    } catch {
      return;
    }
    const entry = this.pending.get(msg.seq);
    if (!entry) return;
    this.pending.delete(msg.seq);
    clearTimeout(entry.timer);
    if (msg.type === "error" || msg.error) {
      const err = msg.error || {};
      entry.reject(new WireError(err.code || "error", err.message));
    } else if (msg.type === ANSWER_TYPES[entry.type]) {
      const { type, seq, ...body } = msg;
      entry.resolve(body);
    } else {
      entry.reject(new WireError("bad_answer", `Unexpected answer type ${msg.type}`));
    }
  }

  #viaSocket(type, seq, body) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        reject(new WireError("timeout", "The device did not answer in time."));
      }, REQUEST_TIMEOUT_MS[type]);
      this.pending.set(seq, { resolve, reject, timer, type });
      try {
        this.ws.send(JSON.stringify({ type, seq, ...body }));
      } catch (err) {
        this.pending.delete(seq);
        clearTimeout(timer);
        reject(new WireError("connection_lost", "The connection dropped before the message went."));
      }
    });
  }

  async #viaHttp(type, body) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), REQUEST_TIMEOUT_MS[type]);
    let res;
    try {
      res = await fetch(HTTP_PATHS[type], {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: ctrl.signal,
        cache: "no-store",
      });
    } catch (err) {
      throw new WireError("unreachable", "The device is not answering. Is it switched on?");
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (!res.ok || data === null || data.error) {
      const err = (data && data.error) || {};
      throw new WireError(err.code || `http_${res.status}`, err.message || `The device answered ${res.status}.`);
    }
    return data;
  }

  #failPending(err) {
    for (const [seq, entry] of this.pending) {
      clearTimeout(entry.timer);
      entry.reject(err);
      this.pending.delete(seq);
    }
  }
}

/** GET /healthz; resolves to its JSON body, rejects when the device does not answer. */
export async function fetchHealth() {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), 4000);
  try {
    const res = await fetch("healthz", { cache: "no-store", signal: ctrl.signal });
    if (!res.ok) throw new WireError(`http_${res.status}`, `healthz answered ${res.status}`);
    return await res.json();
  } finally {
    clearTimeout(timer);
  }
}
