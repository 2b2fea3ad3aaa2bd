// The canvas page: draw, see the live guess, tap the right answer to correct it.

import { Connection, fetchHealth } from "./connection.js";
import { DrawingPad } from "./drawing.js";

// While a stroke is drawn, at most one live guess per this many milliseconds.
const LIVE_INTERVAL_MS = 150;
const HEALTH_INTERVAL_MS = 5000;
// Used until /healthz names the labels of the loaded models (it may not).
const DEFAULT_LABELS = {
  digit: [..."0123456789"],
  char: [..."ABCDEFGHIJKLMNOPQRSTUVWXYZ", ..."abdefghnqrt"],
};
const NOUN = { digit: "digit", char: "letter" };
const MODEL_NAMES = { digit: "Digits", char: "Letters" };
// A live guess is not worth asking for until the ink spans this many logical pixels.
const LIVE_MIN_EXTENT = 12;
// Errors that only mean "not enough ink yet", not that something is wrong.
const QUIET_ERRORS = new Set(["empty_drawing", "drawing_too_small"]);

const $ = (id) => document.getElementById(id);

/** A unix time as the clock shows it: the time today, else the date and the time. */
function when(seconds) {
  const d = new Date(seconds * 1000);
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toDateString() === new Date().toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}
const pct = (p) => `${Math.round(Math.max(0, Math.min(1, Number(p) || 0)) * 100)}%`;

/** How a screen reader should say a label: letters need their case spelled out. */
function spoken(label) {
  if (!/^[A-Za-z]$/.test(label)) return label;
  return label === label.toUpperCase() ? `capital ${label}` : `small ${label}`;
}

/** The class a typed key belongs to in a label set ('c' -> 'C'); null when there is none. */
export function canonical(key, labels) {
  if (labels.includes(key)) return key;
  const up = key.toUpperCase();
  if (up !== key && labels.includes(up)) return up;
  return null;
}

class App {
  constructor() {
    this.mode = "digit";
    this.labels = { ...DEFAULT_LABELS };
    this.shownSeq = 0; // seq of the answer on screen; older answers are stale
    this.resetSeq = 0; // answers to requests up to this seq belong to a drawing that is gone
    this.latest = null; // the newest predict request {seq, answer}
    this.prediction = null; // the answer on screen, the one a correction refers to
    this.lastLiveAt = 0;
    this.liveTimer = null;
    this.httpLiveBusy = false;
    this.correcting = false;

    this.conn = new Connection({ onState: (state, detail) => this.showConnection(state, detail) });
    this.pad = new DrawingPad($("canvas"), {
      onStrokeStart: () => this.strokeStarted(),
      onStrokeMove: () => this.liveSoon(),
      onStrokeEnd: () => this.drawingChanged(),
      onFull: () => this.showCorrection("error", "The drawing is full: undo or clear it."),
    });
  }

  start() {
    for (const button of document.querySelectorAll("[data-mode]")) {
      button.addEventListener("click", () => this.setMode(button.dataset.mode));
    }
    $("undo").addEventListener("click", () => this.undo());
    $("clear").addEventListener("click", () => this.clear());
    $("keypad").addEventListener("click", (e) => {
      const key = e.target.closest("[data-label]");
      if (key) this.correct(key.dataset.label);
    });
    document.addEventListener("keydown", (e) => this.onKey(e));
    this.buildKeypad();
    this.showEmpty();
    this.conn.start();
    this.refreshHealth();
    setInterval(() => this.refreshHealth(), HEALTH_INTERVAL_MS);
  }

  // ---- drawing -------------------------------------------------------------------------

  strokeStarted() {
    const state = $("correction").dataset.state;
    if (state === "ok" || state === "error") this.showCorrection("idle", "");
    this.describeCanvas();
    this.liveSoon();
  }

  drawingChanged() {
    this.describeCanvas();
    if (this.pad.empty) this.showEmpty();
    else this.predict(true);
  }

  undo() {
    if (this.pad.undo()) this.drawingChanged();
  }

  clear() {
    this.pad.clear();
    this.showCorrection("idle", "");
    this.drawingChanged();
  }

  setMode(mode) {
    if (mode === this.mode || !(mode in DEFAULT_LABELS)) return;
    this.mode = mode;
    for (const button of document.querySelectorAll("[data-mode]")) {
      button.setAttribute("aria-pressed", String(button.dataset.mode === mode));
    }
    this.buildKeypad();
    this.showCorrection("idle", "");
    this.showEmpty();
    if (!this.pad.empty) this.predict(true);
  }

  describeCanvas() {
    const n = this.pad.strokes.length;
    const what = n === 0 ? "empty" : `${n} stroke${n === 1 ? "" : "s"}`;
    $("canvas").setAttribute("aria-label", `Drawing area, ${what}. Draw with a finger, pen or mouse.`);
  }

  // ---- prediction ----------------------------------------------------------------------

  /** Ask for a live guess while drawing, at most once per LIVE_INTERVAL_MS. */
  liveSoon() {
    if (this.liveTimer !== null) return;
    const wait = LIVE_INTERVAL_MS - (performance.now() - this.lastLiveAt);
    if (wait <= 0) {
      this.predict(false);
      return;
    }
    this.liveTimer = setTimeout(() => {
      this.liveTimer = null;
      if (this.pad.drawing) this.predict(false);
    }, wait);
  }

  /** Send the drawing for a guess; final is true once a stroke has ended. */
  predict(final) {
    if (this.pad.empty || (!final && this.pad.extent() < LIVE_MIN_EXTENT)) return;
    if (final && this.liveTimer !== null) {
      clearTimeout(this.liveTimer);
      this.liveTimer = null;
    }
    // Over HTTP a live guess waits for the one before it; final ones always go.
    if (!final && !this.conn.open && this.httpLiveBusy) return;
    this.lastLiveAt = performance.now();
    const strokes = this.pad.snapshot();
    const mode = this.mode;
    const req = this.conn.request("predict", { mode, strokes });
    if (req.via === "http" && !final) this.httpLiveBusy = true;
    this.latest = req;
    $("result").dataset.asked = String(req.seq);
    req.answer
      .then((answer) => this.showPrediction(req.seq, { ...answer, mode, strokes }, final))
      .catch((err) => this.showPredictionError(req.seq, err, final))
      .finally(() => {
        if (req.via === "http" && !final) this.httpLiveBusy = false;
      });
  }

  isStale(seq) {
    return seq <= this.shownSeq || seq <= this.resetSeq;
  }

  showPrediction(seq, answer, final) {
    if (this.isStale(seq)) return;
    this.shownSeq = seq;
    $("result").dataset.seq = String(seq);
    this.prediction = answer;
    const personal = answer.source === "personal";
    $("result").dataset.state = "shown";
    $("pred-label").textContent = answer.label;
    $("pred-hint").textContent = `${pct(answer.confidence)} sure`;
    const source = $("pred-source");
    source.hidden = false;
    source.dataset.source = personal ? "personal" : "model";
    source.textContent = personal ? "From this device's corrections" : "From the model";
    const list = $("pred-top");
    list.replaceChildren();
    for (const item of (answer.top || []).slice(0, 3)) {
      const li = document.createElement("li");
      li.dataset.label = item.label;
      const name = document.createElement("span");
      name.className = "top-label";
      name.textContent = item.label;
      const bar = document.createElement("span");
      bar.className = "top-bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.style.width = pct(item.p);
      bar.append(fill);
      const value = document.createElement("span");
      value.className = "top-p";
      value.textContent = pct(item.p);
      li.setAttribute("aria-label", `${spoken(item.label)}: ${pct(item.p)}`);
      li.append(name, bar, value);
      list.append(li);
    }
    if (final) {
      const from = personal ? ", learned from corrections on this device" : "";
      $("pred-live").textContent = `Looks like ${spoken(answer.label)}, ${pct(answer.confidence)} sure${from}.`;
    }
  }

  showPredictionError(seq, err, final) {
    if (this.isStale(seq)) return;
    if (QUIET_ERRORS.has(err.code)) {
      if (!final) return;
      this.shownSeq = seq;
      this.prediction = null;
      this.showEmpty(`Keep drawing the ${NOUN[this.mode]}`, false);
      return;
    }
    if (!final) return; // a live guess that failed is replaced by the next one
    this.shownSeq = seq;
    $("result").dataset.seq = String(seq);
    this.prediction = null;
    $("result").dataset.state = "error";
    $("pred-label").textContent = "!";
    $("pred-hint").textContent = err.message;
    $("pred-source").hidden = true;
    $("pred-top").replaceChildren();
    $("pred-live").textContent = `No answer: ${err.message}`;
  }

  /** Forget the answer on screen; answers still on their way for it are dropped. */
  showEmpty(hint = "", reset = true) {
    if (reset) this.resetSeq = this.conn.seq;
    this.prediction = null;
    $("result").dataset.state = "empty";
    $("pred-label").textContent = "?";
    $("pred-hint").textContent = hint || `Draw a ${NOUN[this.mode]}`;
    $("pred-source").hidden = true;
    $("pred-top").replaceChildren();
  }

  // ---- correction ----------------------------------------------------------------------

  buildKeypad() {
    const pad = $("keypad");
    pad.dataset.mode = this.mode;
    pad.replaceChildren();
    for (const label of this.labels[this.mode]) {
      const key = document.createElement("button");
      key.type = "button";
      key.className = "key";
      key.dataset.label = label;
      key.textContent = label;
      key.setAttribute("aria-label", `It is ${spoken(label)}`);
      pad.append(key);
    }
  }

  /** Store the right label for the answer on screen (waiting for the newest answer first). */
  async correct(label) {
    if (this.correcting) return;
    const pending = this.latest;
    if (pending && !this.isStale(pending.seq)) {
      try {
        await pending.answer;
      } catch {
        // Shown by showPredictionError; there is then nothing to correct.
      }
    }
    const prediction = this.prediction;
    if (!prediction || prediction.mode !== this.mode) {
      const noun = NOUN[this.mode];
      this.showCorrection("error", this.pad.empty ? `Draw a ${noun} first, then tap the right answer.` : "No answer to correct yet.");
      return;
    }
    this.correcting = true;
    $("keypad").setAttribute("aria-busy", "true");
    this.showCorrection("busy", `Saving ${label}\u2026`);
    try {
      const answer = await this.sendCorrection(prediction, label);
      this.showCorrection("ok", `Saved \u2713 ${label}`, label);
      if (Number.isFinite(answer.pending)) this.showPending(answer.pending);
    } catch (err) {
      this.showCorrection("error", `Not saved: ${err.message}`, label);
      if (err.code === "store_full") $("pending").dataset.state = "full";
    } finally {
      this.correcting = false;
      $("keypad").removeAttribute("aria-busy");
      this.refreshHealth();
    }
  }

  /** Correct by the prediction's id; a device that has forgotten the id gets the drawing. */
  async sendCorrection(prediction, label) {
    try {
      return await this.conn.request("correct", { id: prediction.id, label }).answer;
    } catch (err) {
      if (err.code !== "unknown_prediction") throw err;
      const body = { mode: prediction.mode, strokes: prediction.strokes, label };
      return await this.conn.request("correct", body).answer;
    }
  }

  showCorrection(state, text, label = "") {
    const el = $("correction");
    el.dataset.state = state;
    el.dataset.label = label;
    el.textContent = text;
    for (const key of $("keypad").children) {
      key.classList.toggle("chosen", state === "ok" && key.dataset.label === label);
    }
  }

  onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing) return;
    if (e.key === "Escape") {
      e.preventDefault();
      this.clear();
      return;
    }
    if (e.key === "Backspace") {
      e.preventDefault();
      this.undo();
      return;
    }
    if (e.key.length !== 1 || e.repeat) return;
    const label = canonical(e.key, this.labels[this.mode]);
    if (label !== null) {
      e.preventDefault();
      this.correct(label);
      return;
    }
    const other = this.mode === "digit" ? "char" : "digit";
    if (canonical(e.key, this.labels[other]) !== null) {
      this.showCorrection("error", `${e.key} is not a ${NOUN[this.mode]}: switch to ${MODEL_NAMES[other]} first.`);
    }
  }

  // ---- status --------------------------------------------------------------------------

  showConnection(state, detail) {
    const el = $("conn");
    el.dataset.state = state;
    if (state === "open") {
      el.textContent = "Live";
      el.title = "Connected: guesses come live over the WebSocket.";
      this.refreshHealth();
    } else if (state === "connecting") {
      el.textContent = "Connecting\u2026";
      el.title = "Opening the live connection.";
    } else {
      const s = Math.max(1, Math.round((detail.retryMs || 0) / 1000));
      el.textContent = `Reconnecting in ${s} s`;
      el.title = "The live connection dropped: guesses go over plain HTTP until it is back.";
    }
  }

  async refreshHealth() {
    let health;
    try {
      health = await fetchHealth();
    } catch {
      $("models").textContent = "Device not answering";
      $("models").dataset.state = "down";
      return;
    }
    this.conn.retryNow(); // the device answers: no need to sit out the rest of the backoff
    const models = health.models || {};
    const parts = [];
    for (const mode of Object.keys(MODEL_NAMES)) {
      const m = models[mode];
      if (!m) continue;
      parts.push(`${MODEL_NAMES[mode]} ${m.version ?? "?"}`);
      if (Array.isArray(m.labels) && m.labels.join() !== this.labels[mode].join()) {
        this.labels[mode] = m.labels.map(String);
        if (mode === this.mode) this.buildKeypad();
      }
    }
    const models_el = $("models");
    models_el.dataset.state = "ok";
    models_el.textContent = parts.length ? `Models: ${parts.join(" \u00b7 ")}` : "Models: none loaded";
    this.showPending(Number.isFinite(health.pending) ? health.pending : null);
    this.showSync(health.sync || null);
  }

  /** The school server: online or offline, when this device last synced, what it refused. */
  showSync(sync) {
    const el = $("sync");
    const state = sync && typeof sync.state === "string" ? sync.state : "unknown";
    el.dataset.state = state;
    if (state === "off") {
      el.textContent = "School server: none set up";
      el.title = "This device keeps its corrections; none are sent anywhere.";
      return;
    }
    if (state !== "online" && state !== "offline") {
      el.textContent = "School server: ?";
      el.title = "";
      return;
    }
    const last = Number.isFinite(sync.last_sync) ? `last sync ${when(sync.last_sync)}` : "never synced";
    const refused = (Number(sync.rejected) || 0) + (Number(sync.conflicts) || 0);
    const parts = [`School server: ${state}`, last];
    if (refused > 0) parts.push(`${refused} not accepted`);
    el.textContent = parts.join(" \u00b7 ");
    const notes = [sync.server ? `Server ${sync.server}.` : ""];
    if (state === "offline" && sync.last_error) notes.push(`Last problem: ${sync.last_error}.`);
    if (refused > 0) notes.push(`${refused} corrections were not accepted by the server; they stay on this device.`);
    el.title = notes.filter(Boolean).join(" ");
  }

  showPending(count) {
    const pending = $("pending");
    if (count !== null && count !== Number(pending.dataset.count)) delete pending.dataset.state;
    pending.dataset.count = count === null ? "" : String(count);
    pending.textContent = `Corrections waiting to sync: ${count === null ? "?" : count}`;
  }
}

const app = new App();
app.start();
window.hwrApp = app; // for looking at the page's state from the browser's console
