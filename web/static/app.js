// The canvas page: draw, see the live guess, say "Right!" or tap the right answer to teach it.

import { Connection, fetchHealth } from "./connection.js";
import { DrawingPad } from "./drawing.js";

// While a stroke is drawn, at most one live guess per this many milliseconds.
const LIVE_INTERVAL_MS = 150;
// A live guess is shown only once this many answers in a row agree (the stroke's end always
// shows its answer): a half-drawn 7 that reads "2" for one answer does not flash "2".
const LIVE_AGREE = 2;
// ... and only when the model is this sure of it (a partial stroke is usually read unsure).
// Measured on ten pendigits sevens drawn at 60 Hz: the shown label changed 26 times while
// drawing with every live answer shown, 3 times with this rule.
const LIVE_MIN_CONFIDENCE = 0.95;
// ... or when the pen has rested this long on the drawing an answer read: nothing changes any
// more, so that answer is as steady as the drawing (a resting pen sends no new requests).
const LIVE_REST_MS = 300;
const HEALTH_INTERVAL_MS = 5000;
// How long the footer says "New model" after the school's server sent one.
const NEW_MODEL_NOTICE_MS = 20000;
// How long a saved answer can be taken back with the Undo next to it.
export const UNDO_MS = 8000;
// Saved answers of this session a teacher can take back (kept in this tab only).
const RECENT_KEEP = 5;
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
const OFFLINE = "offline. Tap again when it says Live.";
// What a pupil reads for errors whose own message is meant for a developer.
const PUPIL_WORDS = {
  timeout: "No answer yet: the app is busy or restarting. It tries again by itself.",
  unreachable: "The app is offline. It tries again by itself.",
  connection_lost: "The app is offline. It tries again by itself.",
  rate_limited: "Too fast! Wait a moment, then try again.",
  unavailable: "The app is restarting. Try again in a moment.",
  busy: "The app is busy. Try again in a moment.",
  disk_full: "This device is full. Tell your teacher.",
};
const STORAGE = { mode: "hwr.mode", guides: "hwr.guides", recent: "hwr.recent" };

const $ = (id) => document.getElementById(id);

/** A unix time as the clock shows it: the time today, else the date and the time. */
function when(seconds) {
  const d = new Date(seconds * 1000);
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toDateString() === new Date().toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}
/** As when(), but only the day for an earlier one ("1 Dec"): the footer's cell is narrow. */
function shortWhen(seconds) {
  const d = new Date(seconds * 1000);
  if (d.toDateString() === new Date().toDateString()) return when(seconds);
  return d.toLocaleDateString([], { day: "numeric", month: "short" });
}
const pct = (p) => `${Math.round(Math.max(0, Math.min(1, Number(p) || 0)) * 100)}%`;

/** How a screen reader should say a label: letters need their case spelled out. */
function spoken(label) {
  if (!/^[A-Za-z]$/.test(label)) return label;
  return label === label.toUpperCase() ? `capital ${label}` : `small ${label}`;
}

/** A random (version 4) UUID; crypto.randomUUID needs https, which a classroom's LAN lacks. */
export function newUuid() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** An error in words a pupil understands. */
export function words(err) {
  return PUPIL_WORDS[err.code] || err.message || "Something went wrong.";
}

/** The class a typed key belongs to in a label set ('c' -> 'C'); null when there is none. */
export function canonical(key, labels) {
  if (labels.includes(key)) return key;
  const up = key.toUpperCase();
  if (up !== key && labels.includes(up)) return up;
  return null;
}

/** localStorage that never throws (private windows, kiosk profiles without storage). */
const stored = {
  get(storage, key) {
    try {
      return storage.getItem(key);
    } catch {
      return null;
    }
  },
  set(storage, key, value) {
    try {
      storage.setItem(key, value);
    } catch {
      // Not remembered: the page still works.
    }
  },
};

class App {
  constructor() {
    const mode = stored.get(localStorage, STORAGE.mode);
    this.mode = mode in DEFAULT_LABELS ? mode : "digit";
    this.guides = stored.get(localStorage, STORAGE.guides) !== "off";
    this.labels = { ...DEFAULT_LABELS };
    this.shownSeq = 0; // seq of the answer on screen; older answers are stale
    this.resetSeq = 0; // answers to requests up to this seq belong to a drawing that is gone
    this.latest = null; // the newest predict request {seq, answer}
    this.prediction = null; // the answer on screen, the one a correction refers to
    this.liveRun = { label: null, n: 0 }; // live answers in a row with the same label
    this.lastLiveAt = 0;
    this.liveTimer = null;
    this.restTimer = null;
    this.httpLiveBusy = false;
    this.saving = false;
    this.offer = null; // {record, timer, until}: the saved answer the Undo takes back
    this.attempt = null; // the answer being saved: {key, id}, kept until it is saved
    this.healthOk = null; // whether the last HTTP /healthz answered
    this.countdown = null;
    this.recent = this.#loadRecent();

    this.conn = new Connection({
      onState: (state, detail, changed) => this.showConnection(state, detail, changed),
      onHealth: (health) => this.showHealth(health),
      onWatching: (n) => this.showWatching(n),
    });
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
    $("right").addEventListener("click", () => this.confirm());
    $("undo-save").addEventListener("click", () => this.undoSave());
    $("keypad").addEventListener("click", (e) => {
      const key = e.target.closest("[data-label]");
      if (key) this.correct(key.dataset.label);
    });
    $("menu-open").addEventListener("click", () => this.openMenu());
    $("menu-close").addEventListener("click", () => $("menu").close());
    $("guides-toggle").addEventListener("click", () => this.setGuides(!this.guides));
    $("teacher-open").addEventListener("click", () => this.askTeacher(true));
    $("teacher-no").addEventListener("click", () => this.askTeacher(false));
    $("teacher-yes").addEventListener("click", () => this.showTeacherList());
    $("teacher-list").addEventListener("click", (e) => {
      const button = e.target.closest("[data-withdraw]");
      if (button) this.withdraw(button.dataset.withdraw, "teacher");
    });
    document.addEventListener("keydown", (e) => this.onKey(e));
    this.applyMode();
    this.setGuides(this.guides);
    this.conn.start();
    this.refreshHealth();
    setInterval(() => {
      if (!this.conn.open) this.refreshHealth(); // over the socket, pings bring the health
    }, HEALTH_INTERVAL_MS);
  }

  // ---- drawing -------------------------------------------------------------------------

  strokeStarted() {
    if (this.offer !== null) this.endOffer();
    const state = $("correction").dataset.state;
    if (state !== "busy" && state !== "idle") this.showCorrection("idle", "");
    if ($("result").dataset.state === "saved") this.showEmpty();
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
    if (this.offer === null) this.showCorrection("idle", "");
    this.drawingChanged();
  }

  setMode(mode) {
    if (mode === this.mode || !(mode in DEFAULT_LABELS)) return;
    this.mode = mode;
    stored.set(localStorage, STORAGE.mode, mode);
    this.endOffer();
    this.applyMode();
    this.showCorrection("idle", "");
    if (!this.pad.empty) this.predict(true);
  }

  applyMode() {
    for (const button of document.querySelectorAll("[data-mode]")) {
      button.setAttribute("aria-pressed", String(button.dataset.mode === this.mode));
    }
    document.body.dataset.mode = this.mode;
    this.pad.setGuides(this.guides && this.mode === "char");
    this.buildKeypad();
    this.showEmpty();
  }

  setGuides(on) {
    this.guides = on;
    stored.set(localStorage, STORAGE.guides, on ? "on" : "off");
    $("guides-toggle").setAttribute("aria-pressed", String(on));
    $("guides-state").textContent = on ? "on" : "off";
    this.pad.setGuides(on && this.mode === "char");
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
    this.clearedSent = false;
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

  /** Whether a live answer is steady enough to show (final answers always are). */
  steady(answer, final) {
    if (final) {
      this.liveRun = { label: null, n: 0 };
      return true;
    }
    const run = this.liveRun;
    run.n = run.label === answer.label ? run.n + 1 : 1;
    run.label = answer.label;
    const onScreen = this.prediction !== null && this.prediction.label === answer.label;
    return onScreen || (run.n >= LIVE_AGREE && answer.confidence >= LIVE_MIN_CONFIDENCE);
  }

  showPrediction(seq, answer, final) {
    if (this.isStale(seq)) return;
    clearTimeout(this.restTimer);
    this.restTimer = null;
    if (this.steady(answer, final)) this.display(seq, answer, final);
    else if (answer.confidence >= LIVE_MIN_CONFIDENCE) this.showOnRest(seq, answer);
  }

  /** Show a sure live answer once the pen has rested on the very drawing it read. */
  showOnRest(seq, answer) {
    const points = answer.strokes.reduce((n, s) => n + s.length, 0);
    this.restTimer = setTimeout(() => {
      this.restTimer = null;
      const same = this.pad.drawing && this.pad.pointCount() === points;
      if (same && this.latest?.seq === seq && !this.isStale(seq)) this.display(seq, answer, false);
    }, LIVE_REST_MS);
  }

  display(seq, answer, final) {
    this.shownSeq = seq;
    const result = $("result");
    result.dataset.seq = String(seq);
    result.dataset.final = String(final);
    delete result.dataset.error;
    this.prediction = answer;
    const personal = answer.source === "personal";
    result.dataset.state = "shown";
    $("pred-label").textContent = answer.label;
    $("pred-hint").textContent = `${pct(answer.confidence)} sure`;
    const source = $("pred-source");
    source.hidden = false;
    source.dataset.source = personal ? "personal" : "model";
    source.textContent = personal ? "Learnt here" : "Model";
    source.title = personal ? "From this device's corrections" : "From the model";
    const list = $("pred-top");
    list.replaceChildren();
    // An entry that rounds to 0% says nothing.
    for (const item of (answer.top || []).filter((t) => Math.round(t.p * 100) >= 1).slice(0, 3)) {
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
    this.showActions();
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
    const result = $("result");
    result.dataset.seq = String(seq);
    result.dataset.error = err.code;
    this.prediction = null;
    result.dataset.state = "error";
    $("pred-label").textContent = "!";
    $("pred-hint").textContent = words(err);
    $("pred-source").hidden = true;
    $("pred-top").replaceChildren();
    $("pred-live").textContent = `No answer: ${words(err)}`;
    this.showActions();
  }

  /** Forget the answer on screen; answers still on their way for it are dropped. */
  showEmpty(hint = "", reset = true) {
    this.tellCleared();
    if (reset) this.resetSeq = this.conn.seq;
    this.prediction = null;
    this.liveRun = { label: null, n: 0 };
    const result = $("result");
    result.dataset.state = "empty";
    delete result.dataset.error;
    $("pred-label").textContent = "?";
    $("pred-hint").textContent = hint || `Draw a ${NOUN[this.mode]}`;
    $("pred-source").hidden = true;
    $("pred-top").replaceChildren();
    this.showActions();
  }

  /** An empty canvas: a teacher watching (edge/viewer.py) sees it empty too. Socket only. */
  tellCleared() {
    if (this.clearedSent || !this.conn.open) return;
    this.clearedSent = true;
    this.conn.request("clear", {}).answer.catch(() => {});
  }

  /** The Right! button, the Undo of a saved answer, and the keypad's heading. */
  showActions() {
    const offer = this.offer !== null;
    const right = $("right");
    right.hidden = offer;
    right.disabled = this.prediction === null || this.saving;
    $("undo-save").hidden = !offer;
    const noun = NOUN[this.mode];
    const guess = this.prediction ? `Not ${this.prediction.label}?` : "Wrong guess?";
    $("keypad-title").textContent = `${guess} Tap the right ${noun}`;
    if (this.prediction) right.setAttribute("aria-label", `Right: it is ${spoken(this.prediction.label)}`);
    else right.setAttribute("aria-label", "Right: the guess is what I wrote");
  }

  // ---- saving answers ------------------------------------------------------------------

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
      key.setAttribute("aria-label", `Teach it: this is ${spoken(label)}`);
      pad.append(key);
    }
  }

  /** The answer on screen once the newest request has its answer; null with a message. */
  async answerOnScreen(what) {
    const pending = this.latest;
    if (pending && !this.isStale(pending.seq)) {
      try {
        await pending.answer;
      } catch {
        // Shown by showPredictionError; there is then nothing to answer.
      }
    }
    const prediction = this.prediction;
    if (!prediction || prediction.mode !== this.mode) {
      const noun = NOUN[this.mode];
      if (this.conn.state === "stalled") this.showCorrection("error", `Not saved: ${OFFLINE}`);
      else if (this.pad.empty) this.showCorrection("error", `Draw a ${noun} first, then ${what}.`);
      else this.showCorrection("error", "There is no guess to answer yet.");
      return null;
    }
    return prediction;
  }

  /** Whether the device is known not to answer now: a tap then says so instead of waiting. */
  offline() {
    return this.conn.state === "stalled" || (!this.conn.open && this.healthOk === false);
  }

  /** Store the right label for the answer on screen (a correction). */
  async correct(label) {
    if (this.saving) return;
    if (this.offline()) {
      this.showCorrection("error", `Not saved: ${OFFLINE}`, label);
      return;
    }
    const prediction = await this.answerOnScreen("tap the right answer");
    if (!prediction) return;
    await this.save("correction", prediction, label);
  }

  /** Keep the answer on screen as right (a confirmation, counted apart from corrections). */
  async confirm() {
    if (this.saving) return;
    if (this.offline()) {
      this.showCorrection("error", `Not saved: ${OFFLINE}`);
      return;
    }
    const prediction = await this.answerOnScreen("tap Right!");
    if (!prediction) return;
    await this.save("confirmation", prediction, prediction.label);
  }

  async save(kind, prediction, label) {
    this.saving = true;
    $("keypad").setAttribute("aria-busy", "true");
    this.showActions();
    this.showCorrection("busy", `Saving ${label}\u2026`);
    // One id per answer, kept while it is not saved: tapping again after "Not saved" (a reply
    // lost when the app restarted) sends the same id, and the device stores it once.
    const key = JSON.stringify([kind, prediction.mode, label, prediction.strokes]);
    if (!this.attempt || this.attempt.key !== key) this.attempt = { key, id: newUuid() };
    try {
      const type = kind === "confirmation" ? "confirm" : "correct";
      const answer = await this.send(type, prediction, label, this.attempt.id);
      this.attempt = null; // saved: the next answer is a new one
      this.saved(kind, answer, prediction, answer.label || label);
    } catch (err) {
      const why = ["unreachable", "connection_lost"].includes(err.code) ? OFFLINE : words(err);
      this.showCorrection("error", `Not saved: ${why}`, label);
      if (err.code === "store_full") $("pending").dataset.state = "full";
      if (err.code === "disk_full") this.refreshHealth(); // the footer says so to the teacher
      if (err.code === "invalid_correction_id") this.attempt = null; // a new id next time
    } finally {
      this.saving = false;
      $("keypad").removeAttribute("aria-busy");
      this.showActions();
      if (!this.conn.open) this.refreshHealth();
    }
  }

  /** Send by the prediction's id; a device that has forgotten the id gets the drawing. */
  async send(type, prediction, label, answerId) {
    try {
      return await this.conn.request(type, { id: prediction.id, label, correction_id: answerId }).answer;
    } catch (err) {
      if (err.code !== "unknown_prediction") throw err;
      const body = { mode: prediction.mode, strokes: prediction.strokes, label, correction_id: answerId };
      return await this.conn.request(type, body).answer;
    }
  }

  /** A saved answer: clear the drawing, say so, and offer an Undo for a few seconds. */
  saved(kind, answer, prediction, label) {
    const record = {
      id: answer.correction_id || answer.confirmation_id,
      kind,
      mode: prediction.mode,
      label,
      predicted: prediction.label,
      strokes: prediction.strokes,
      at: Date.now(),
      withdrawn: false,
    };
    this.remember(record);
    if (Number.isFinite(answer.pending)) this.showPending(answer.pending);
    this.pad.clear();
    this.describeCanvas();
    this.showEmpty();
    const result = $("result");
    result.dataset.state = "saved";
    result.dataset.kind = kind;
    $("pred-label").textContent = label;
    $("pred-hint").textContent = kind === "confirmation" ? `Right! Kept as ${label}.` : `Saved as ${label}. Thank you!`;
    $("pred-live").textContent = `Saved as ${spoken(label)}. The drawing is cleared for the next one.`;
    const text = kind === "confirmation" ? `Kept \u2713 ${label} is right` : `Saved \u2713 ${label}`;
    this.showCorrection("ok", text, label);
    this.flash();
    this.offerUndo(record);
  }

  flash() {
    const pad = $("canvas").parentElement;
    pad.classList.remove("acked");
    void pad.offsetWidth; // restart the animation
    pad.classList.add("acked");
    setTimeout(() => pad.classList.remove("acked"), 900);
  }

  offerUndo(record) {
    this.endOffer();
    const until = performance.now() + UNDO_MS;
    const tick = () => {
      const left = Math.ceil((until - performance.now()) / 1000);
      if (left <= 0) {
        this.endOffer();
        return;
      }
      $("undo-left").textContent = `(${left})`;
    };
    this.offer = { record, timer: setInterval(tick, 250), until };
    tick();
    this.showActions();
  }

  endOffer() {
    if (this.offer === null) return;
    clearInterval(this.offer.timer);
    this.offer = null;
    $("undo-left").textContent = "";
    if ($("result").dataset.state === "saved") this.showEmpty();
    this.showActions();
  }

  /** The Undo next to a saved answer: take it back and put the drawing back to answer again. */
  async undoSave() {
    const offer = this.offer;
    if (offer === null || this.saving) return;
    const record = offer.record;
    this.endOffer();
    const ok = await this.withdraw(record.id, "pupil");
    if (!ok) return;
    if (this.pad.empty && record.mode === this.mode) {
      this.pad.restore(record.strokes);
      this.describeCanvas();
      this.predict(true);
    }
    this.showCorrection("undone", `Undone: ${record.label} not kept. Tap the right one.`);
  }

  /** Take back a saved answer (by the pupil's Undo or a teacher); returns whether it worked. */
  async withdraw(id, by) {
    const record = this.recent.find((r) => r.id === id);
    if (!record || record.withdrawn) return false;
    this.saving = true;
    this.showCorrection("busy", "Taking it back\u2026");
    try {
      const answer = await this.conn.request("withdraw", { correction_id: id, by }).answer;
      record.withdrawn = true;
      this.#saveRecent();
      this.renderTeacherList();
      if (Number.isFinite(answer.pending)) this.showPending(answer.pending);
      this.showCorrection("undone", `Taken back: ${record.label} is not kept.`);
      return true;
    } catch (err) {
      const why = ["unreachable", "connection_lost"].includes(err.code) ? OFFLINE : words(err);
      this.showCorrection("error", `Not taken back: ${why}`);
      return false;
    } finally {
      this.saving = false;
      this.showActions();
    }
  }

  remember(record) {
    this.recent = [...this.recent.filter((r) => r.id !== record.id), record].slice(-RECENT_KEEP);
    this.#saveRecent();
    this.renderTeacherList();
  }

  #loadRecent() {
    try {
      const list = JSON.parse(stored.get(sessionStorage, STORAGE.recent) || "[]");
      return Array.isArray(list) ? list.filter((r) => r && typeof r.id === "string").slice(-RECENT_KEEP) : [];
    } catch {
      return [];
    }
  }

  #saveRecent() {
    stored.set(sessionStorage, STORAGE.recent, JSON.stringify(this.recent));
  }

  showCorrection(state, text, label = "") {
    const el = $("correction");
    el.dataset.state = state;
    el.dataset.label = label;
    el.textContent = text;
    el.title = text;
    for (const key of $("keypad").children) {
      key.classList.toggle("chosen", state === "ok" && key.dataset.label === label);
    }
  }

  // ---- settings and the teacher's list --------------------------------------------------

  openMenu() {
    this.askTeacher(false);
    $("teacher").hidden = true;
    $("menu").showModal();
  }

  askTeacher(ask) {
    $("teacher-ask").hidden = ask;
    $("teacher-confirm").hidden = !ask;
  }

  showTeacherList() {
    $("teacher-confirm").hidden = true;
    $("teacher").hidden = false;
    this.renderTeacherList();
  }

  renderTeacherList() {
    const list = $("teacher-list");
    list.replaceChildren();
    if (this.recent.length === 0) {
      const li = document.createElement("li");
      li.className = "teacher-empty";
      li.textContent = "Nothing saved on this screen yet.";
      list.append(li);
      return;
    }
    for (const r of [...this.recent].reverse()) {
      const li = document.createElement("li");
      li.dataset.id = r.id;
      li.append(thumbnail(r.strokes));
      const text = document.createElement("span");
      text.className = "teacher-text";
      const what =
        r.kind === "confirmation" ? `${r.label}: said right` : `${r.label} (the guess was ${r.predicted})`;
      const at = new Date(r.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      text.textContent = `${what} \u00b7 ${at}`;
      li.append(text);
      if (r.withdrawn) {
        const done = document.createElement("span");
        done.className = "teacher-done";
        done.textContent = "Taken back";
        li.append(done);
      } else {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "tool";
        button.dataset.withdraw = r.id;
        button.textContent = "Take back";
        button.setAttribute("aria-label", `Take back ${what}`);
        li.append(button);
      }
      list.append(li);
    }
  }

  onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing) return;
    if ($("menu").open) return;
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

  showConnection(state, detail, changed) {
    const el = $("conn");
    el.dataset.state = state;
    if (state !== "open") this.showWatching(0); // nobody watches an app that is down; health says again
    clearInterval(this.countdown);
    this.countdown = null;
    if (state === "open") {
      el.textContent = "Live";
      el.title = "The app answers: guesses come live.";
      // Back after a freeze or a restart: the drawing on screen is read again, so no stale
      // "no answer" stays and a correction refers to an answer of the process now running.
      if (changed && !this.pad.empty && !this.pad.drawing) this.predict(true);
    } else if (state === "connecting") {
      el.textContent = "Connecting\u2026";
      el.title = "Opening the live connection.";
    } else if (state === "stalled") {
      el.textContent = "Not answering";
      el.title = "The app does not answer; this page waits for it.";
    } else {
      const show = () => {
        const s = Math.max(1, Math.ceil((detail.retryAt - Date.now()) / 1000));
        el.textContent = `Reconnecting in ${s} s`;
      };
      show();
      this.countdown = setInterval(show, 250);
      el.title = "The live connection dropped: guesses go over plain HTTP until it is back.";
    }
  }

  async refreshHealth() {
    let health;
    try {
      health = await fetchHealth();
    } catch {
      this.healthOk = false;
      $("models").textContent = "App not answering";
      $("models").dataset.state = "down";
      return;
    }
    this.healthOk = true;
    this.conn.retryNow(); // the device answers: no need to sit out the rest of the backoff
    this.showHealth(health);
  }

  showHealth(health) {
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
    // A model the school's server sent was swapped in since the last look: say so for a while.
    const changed = Number.isFinite(health.model_changed_at) ? health.model_changed_at : null;
    if (this.modelChangedAt !== undefined && changed !== null && changed !== this.modelChangedAt) {
      this.newModelUntil = Date.now() + NEW_MODEL_NOTICE_MS;
    }
    this.modelChangedAt = changed;
    const fresh = Date.now() < (this.newModelUntil || 0);
    models_el.dataset.state = fresh ? "new" : "ok";
    models_el.textContent = parts.length
      ? (fresh ? "New model: " : "") + parts.join(" \u00b7 ")
      : "Models: none loaded";
    models_el.title = parts.length ? `Models: ${parts.join(", ")}` : "No model is loaded.";
    const full = Boolean(health.storage && health.storage.full);
    this.showPending(Number.isFinite(health.pending) ? health.pending : null, full);
    this.showSync(health.sync || null);
    if (Number.isFinite(health.viewers)) this.showWatching(health.viewers);
    this.showRemote(health.tunnel || null);
  }

  /** Tell the pupil when a teacher watches this canvas (edge/viewer.py). */
  showWatching(n) {
    const el = $("watching");
    el.hidden = n <= 0;
    el.dataset.count = String(n);
    el.textContent = n === 1 ? "Teacher watching" : `${n} watching`;
    el.title = n === 1 ? "A teacher is watching this canvas." : `${n} teachers are watching this canvas.`;
  }

  /** The viewer's public link while an ngrok tunnel is open, for the teacher. */
  showRemote(tunnel) {
    const el = $("remote");
    const state = tunnel ? tunnel.state : "off";
    const url = state === "open" ? tunnel.viewer_url : null;
    el.dataset.state = state;
    if (state === "failed") {
      // Asked for and not opened (offline, a refused token): the teacher sees why here.
      el.hidden = false;
      el.textContent = "Remote: not open";
      el.title = `The tunnel for watching this canvas remotely did not open: ${tunnel.error || "see the log"}.`;
      return;
    }
    el.hidden = !url;
    el.textContent = url ? `Watch remotely: ${url}` : "";
    el.title = url ? "Open this link elsewhere and sign in with the viewer token." : "";
  }

  /** The school server: online or offline, when this device last synced, what it refused. */
  showSync(sync) {
    const el = $("sync");
    const state = sync && typeof sync.state === "string" ? sync.state : "unknown";
    el.dataset.state = state;
    if (state === "off") {
      el.textContent = "No school server";
      el.title = "This device keeps its corrections; none are sent anywhere.";
      return;
    }
    if (state === "refused") {
      el.textContent = "Server refuses this device";
      el.title =
        "The school's server does not accept this device's token (revoked or replaced). " +
        "Corrections stay on this device; whoever runs the server can give it a new token.";
      return;
    }
    if (state !== "online" && state !== "offline") {
      el.textContent = "Server: ?";
      el.title = "";
      return;
    }
    const last = Number.isFinite(sync.last_sync) ? `synced ${shortWhen(sync.last_sync)}` : "never synced";
    const refused = (Number(sync.rejected) || 0) + (Number(sync.conflicts) || 0);
    // Short enough for the 800x480 footer: the whole story is in the title (hover, or a teacher).
    const parts = [`Server ${state}`, last];
    if (refused > 0) parts.push(`${refused} not accepted`);
    el.textContent = parts.join(" \u00b7 ");
    const at = Number.isFinite(sync.last_sync) ? `last synced ${when(sync.last_sync)}` : "never synced";
    const notes = [`School server ${state}; ${at}.`, sync.server ? `Server ${sync.server}.` : ""];
    if (state === "offline" && sync.last_error) notes.push(`Last problem: ${sync.last_error}.`);
    if (refused > 0) notes.push(`${refused} corrections were not accepted by the server; they stay on this device.`);
    el.title = notes.filter(Boolean).join(" ");
  }

  showPending(count, storageFull = false) {
    const pending = $("pending");
    if (count !== null && count !== Number(pending.dataset.count)) delete pending.dataset.state;
    pending.dataset.count = count === null ? "" : String(count);
    if (storageFull) {
      pending.dataset.state = "disk-full";
      pending.textContent = "Storage full: tell a teacher";
      pending.title = "Corrections cannot be saved: this device's storage is full. Free some space on it.";
      return;
    }
    if (pending.dataset.state === "disk-full") delete pending.dataset.state;
    pending.textContent = `Waiting to sync: ${count === null ? "?" : count}`;
    pending.title = "Corrections and confirmations on this device not yet sent to the school's server.";
  }
}

/** A small picture of a saved drawing, for the teacher's list (drawn here, never sent). */
function thumbnail(strokes) {
  const c = document.createElement("canvas");
  c.className = "thumb";
  c.width = 88;
  c.height = 88;
  c.setAttribute("aria-hidden", "true");
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, 88, 88);
  ctx.scale(88 / 280, 88 / 280);
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.lineWidth = 16;
  ctx.strokeStyle = "#111827";
  for (const s of Array.isArray(strokes) ? strokes : []) {
    if (!s.length) continue;
    ctx.beginPath();
    ctx.moveTo(s[0][0], s[0][1]);
    for (const p of s.slice(1)) ctx.lineTo(p[0], p[1]);
    if (s.length === 1) ctx.lineTo(s[0][0] + 0.1, s[0][1]);
    ctx.stroke();
  }
  return c;
}

const app = new App();
app.start();
window.hwrApp = app; // for looking at the page's state from the browser's console
