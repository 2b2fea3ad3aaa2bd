// Talking to the edge: one WebSocket (/ws) that reconnects by itself with backoff, and the
// HTTP endpoints (/api/...) whenever the socket is not open. Whether the device is alive comes
// from its answers: a health message is sent over the socket every few seconds, and an open
// socket whose pings go unanswered is "stalled", not live.

const HTTP_PATHS = {
  predict: "api/predict",
  correct: "api/correct",
  confirm: "api/confirm",
  withdraw: "api/withdraw",
};
const ANSWER_TYPES = {
  predict: "prediction",
  correct: "corrected",
  confirm: "confirmed",
  withdraw: "withdrawn",
  health: "health",
};
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 5000;
const REQUEST_TIMEOUT_MS = { predict: 5000, correct: 10000, confirm: 10000, withdraw: 10000, health: 4000 };
export const PING_INTERVAL_MS = 2000;
export const PING_TIMEOUT_MS = 3000;

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
   * onState(state, detail): "connecting", "open" (answers come), "stalled" (the socket is open
   * but pings go unanswered) or "closed" (detail.retryAt: when the next try is, ms since epoch).
   * onHealth(body): every answer to a ping, the same body as /healthz.
   * onWatching(n): how many viewers (edge/viewer.py) watch this canvas, whenever it changes.
   */
  constructor({ onState, onHealth, onWatching } = {}) {
    this.onState = onState || (() => {});
    this.onHealth = onHealth || (() => {});
    this.onWatching = onWatching || (() => {});
    this.ws = null;
    this.seq = 0;
    this.pending = new Map(); // seq -> {resolve, reject, timer, type}
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pingSeq = null; // seq of the ping waiting for its answer
    this.state = "connecting";
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Whether the device answers right now (an open socket whose pings are answered). */
  get live() {
    return this.state === "open";
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
   * Send a message ("predict", "correct", "confirm", "withdraw"); returns {seq, answer, via}
   * where answer is a promise of the reply body (without "type"/"seq") that rejects with a
   * WireError.
   */
  request(type, body) {
    const seq = ++this.seq;
    if (!this.open) return { seq, answer: this.#viaHttp(type, body), via: "http" };
    // Every message may be sent twice (each is stored once), so one that the dropped socket
    // left unanswered is sent again over HTTP.
    const answer = this.#viaSocket(type, seq, body).catch((err) => {
      if (err.code === "connection_lost") return this.#viaHttp(type, body);
      throw err;
    });
    return { seq, answer, via: "ws" };
  }

  #setState(state, detail = {}) {
    const changed = state !== this.state;
    this.state = state;
    this.onState(state, detail, changed);
  }

  #connect() {
    this.retryTimer = null;
    this.#setState("connecting");
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
      this.#setState("open");
      this.#ping();
    });
    ws.addEventListener("message", (e) => this.#onMessage(e));
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.#stopPings();
      this.#failPending(new WireError("connection_lost", "The connection dropped before the answer came."));
      this.#scheduleRetry();
    });
  }

  #scheduleRetry() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.#connect(), delay);
    this.#setState("closed", { retryAt: Date.now() + delay });
  }

  /** One ping, then the next one PING_INTERVAL_MS after its answer (or its timeout). */
  #ping() {
    this.#stopPings();
    if (!this.open) return;
    const seq = ++this.seq;
    this.pingSeq = seq;
    this.#viaSocket("health", seq, {}, PING_TIMEOUT_MS)
      .then((body) => {
        this.onHealth(body);
      })
      .catch((err) => {
        if (err.code === "timeout" && this.open && this.state !== "stalled") this.#setState("stalled");
      })
      .finally(() => {
        if (this.pingSeq !== seq) return;
        this.pingSeq = null;
        if (this.open) this.pingTimer = setTimeout(() => this.#ping(), PING_INTERVAL_MS);
      });
  }

  #stopPings() {
    clearTimeout(this.pingTimer);
    this.pingTimer = null;
  }

  #onMessage(e) {
    if (typeof e.data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(e.data);
    } catch {
      return;
    }
    // Any answer means the device is alive again, late ones to forgotten requests included.
    if (this.state === "stalled") this.#setState("open");
    if (msg.type === "watching") {
      this.onWatching(Math.max(0, Number(msg.viewers) || 0));
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

  #viaSocket(type, seq, body, timeoutMs = REQUEST_TIMEOUT_MS[type]) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        reject(new WireError("timeout", "No answer in time."));
      }, timeoutMs);
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
      throw new WireError("unreachable", "The app is not answering.");
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
      throw new WireError(err.code || `http_${res.status}`, err.message || `The app answered ${res.status}.`);
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
