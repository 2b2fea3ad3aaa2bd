// The viewer: sign in with the device's viewer token, then watch its canvas live, read-only.
// Protocol (edge/viewer.py): a snapshot first, then events whose seq grows by one ("points" keep
// the seq of the last event: they may be thinned); on a gap the page asks for a snapshot. A frame
// holds one message or an array of them, in order.

const SIZE = 280;
const LINE_WIDTH = 14;
const INK = "#111827";
const PAPER = "#ffffff";
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 8000;
const MODE_NAMES = { digit: "Digits", char: "Letters" };
const SIGNED_OUT = 4001; // the socket's close code when the session ended

const $ = (id) => document.getElementById(id);
const pct = (p) => `${Math.round(Math.max(0, Math.min(1, Number(p) || 0)) * 100)}%`;

async function postJson(path, body) {
  const res = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
    credentials: "same-origin",
  });
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  return { status: res.status, data };
}

/** Whether this browser's sign-in holds: true, false, or null when the device is not answering. */
async function signedIn() {
  try {
    const res = await fetch("/viewer/session", { cache: "no-store", credentials: "same-origin" });
    if (!res.ok) return res.status >= 500 ? null : false;
    return (await res.json()).signed_in === true;
  } catch {
    return null;
  }
}

class ViewerPage {
  constructor() {
    this.strokes = [];
    this.seq = null;
    this.waiting = true; // for a snapshot: events before it are not applied
    this.mode = null;
    this.prediction = null;
    this.correction = null;
    this.answer = null;
    this.closedCanvas = false;
    this.ws = null;
    this.attempt = 0;
    this.stopped = true;
    this.frame = null;
    this.snapshots = 0; // snapshots received (gaps recovered count one each)
    this.canvas = $("canvas");
    this.ctx = this.canvas.getContext("2d");
  }

  async start() {
    $("signin").addEventListener("submit", (e) => {
      e.preventDefault();
      this.signIn();
    });
    $("signout").addEventListener("click", () => this.signOut());
    new ResizeObserver(() => this.resize()).observe(this.canvas);
    const state = await signedIn();
    if (state) this.watch();
    else this.showSignIn(state === null ? "The device is not answering: reload this page in a moment." : "");
  }

  // ---- signing in and out --------------------------------------------------------------

  showSignIn(message) {
    this.stopped = true;
    $("live").hidden = true;
    $("signout").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message;
    this.setConn("signed-out", "Not signed in");
    $("token").focus();
  }

  async signIn() {
    const token = $("token").value.trim();
    if (!token) return;
    $("signin-button").disabled = true;
    try {
      const { status, data } = await postJson("/viewer/signin", { token });
      if (status === 200 && data && data.signed_in) {
        $("token").value = "";
        this.watch();
        return;
      }
      const messages = {
        401: "That is not this device's viewer token.",
        429: "Too many wrong tokens: wait a minute, then try again.",
      };
      const fallback = (data && data.error && data.error.message) || `The device answered ${status}.`;
      $("signin-error").textContent = messages[status] || fallback;
    } catch {
      $("signin-error").textContent = "The device is not answering.";
    } finally {
      $("signin-button").disabled = false;
    }
  }

  async signOut() {
    this.stopped = true;
    if (this.ws) this.ws.close(1000, "signed out");
    try {
      await postJson("/viewer/signout", {});
    } finally {
      this.reset();
      this.showSignIn("Signed out.");
    }
  }

  // ---- the socket ----------------------------------------------------------------------

  watch() {
    this.stopped = false;
    $("signin").hidden = true;
    $("live").hidden = false;
    $("signout").hidden = false;
    this.resize();
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    const url = new URL("/viewer/ws", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    this.setConn("connecting", "Connecting\u2026");
    this.waiting = true;
    const ws = new WebSocket(url.href);
    this.ws = ws;
    ws.addEventListener("open", () => {
      this.attempt = 0;
      this.setConn("open", "Live");
    });
    ws.addEventListener("message", (e) => {
      if (typeof e.data !== "string") return;
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return;
      }
      for (const m of Array.isArray(msg) ? msg : [msg]) this.onMessage(m);
    });
    ws.addEventListener("close", (e) => this.onClose(ws, e));
  }

  async onClose(ws, e) {
    if (this.ws !== ws) return;
    this.ws = null;
    if (this.stopped) return;
    const state = e.code === SIGNED_OUT ? false : await signedIn();
    if (this.stopped) return;
    if (state === false) {
      this.reset();
      this.showSignIn("Your sign-in has ended: sign in again to watch.");
      return;
    }
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    this.attempt += 1;
    const wait = `reconnecting in ${Math.max(1, Math.round(delay / 1000))} s`;
    // Not answering (restarting, switched off, out of reach): keep the sign-in and try again.
    this.setConn("closed", state === null ? `Device not answering: ${wait}` : wait[0].toUpperCase() + wait.slice(1));
    setTimeout(() => this.connect(), delay);
  }

  setConn(state, text) {
    const el = $("conn");
    el.dataset.state = state;
    el.textContent = text;
  }

  // ---- the protocol --------------------------------------------------------------------

  onMessage(msg) {
    if (msg.type === "snapshot") {
      this.strokes = (msg.strokes || []).map((s) => s.slice());
      this.mode = msg.mode || null;
      this.prediction = msg.prediction || null;
      this.correction = msg.correction ? msg.correction.label : null;
      this.answer = msg.answer || null;
      this.closedCanvas = false;
      this.seq = msg.seq;
      this.waiting = false;
      this.snapshots += 1;
    } else if (msg.type === "points") {
      if (this.waiting) return;
      if (msg.seq !== this.seq) return this.gap();
      this.setPoints(msg.stroke, msg.from, msg.points);
    } else if (msg.type === "error" || msg.type === "pong") {
      return;
    } else {
      if (this.waiting || !Number.isInteger(msg.seq) || msg.seq <= this.seq) return;
      if (msg.seq !== this.seq + 1) return this.gap();
      this.seq = msg.seq;
      this.apply(msg);
    }
    this.renderSoon();
  }

  /** A missed event: forget the deltas until a fresh snapshot comes. */
  gap() {
    this.waiting = true;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "snapshot" }));
  }

  apply(msg) {
    if (msg.type === "clear") {
      this.strokes = [];
      this.mode = msg.mode || null;
      this.prediction = null;
      this.correction = null;
      if (msg.closed === true) this.answer = null; // the page left; a plain clear keeps it
      this.closedCanvas = msg.closed === true;
    } else if (msg.type === "stroke") {
      while (this.strokes.length < msg.stroke) this.strokes.push([]);
      this.strokes[msg.stroke] = msg.points.slice();
    } else if (msg.type === "undo") {
      this.strokes.length = Math.min(this.strokes.length, msg.strokes);
    } else if (msg.type === "prediction") {
      this.prediction = msg;
      if (msg.mode) this.mode = msg.mode;
    } else if (msg.type === "corrected") {
      if (msg.kind !== "confirmation") this.correction = msg.label;
      this.answer = { label: msg.label, kind: msg.kind || "correction", predicted: msg.predicted ?? null };
    } else if (msg.type === "withdrawn") {
      this.correction = null;
      this.answer = null;
    }
  }

  setPoints(index, from, points) {
    while (this.strokes.length <= index) this.strokes.push([]);
    const stroke = this.strokes[index];
    if (from < stroke.length) stroke.length = from;
    for (const p of points) stroke.push(p);
  }

  reset() {
    this.strokes = [];
    this.prediction = null;
    this.correction = null;
    this.answer = null;
    this.seq = null;
    this.waiting = true;
    this.renderSoon();
  }

  // ---- drawing -------------------------------------------------------------------------

  resize() {
    const r = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(r.width * dpr);
    const h = Math.round(r.height * dpr);
    if (w > 0 && h > 0 && (w !== this.canvas.width || h !== this.canvas.height)) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    this.render();
  }

  renderSoon() {
    if (this.frame !== null) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.render();
    });
  }

  render() {
    const { ctx, canvas } = this;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = PAPER;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(canvas.width / SIZE, 0, 0, canvas.height / SIZE, 0, 0);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = LINE_WIDTH;
    ctx.strokeStyle = INK;
    ctx.fillStyle = INK;
    let points = 0;
    let drawn = 0;
    for (const s of this.strokes) {
      if (!s.length) continue;
      drawn += 1;
      points += s.length;
      if (s.length === 1) {
        ctx.beginPath();
        ctx.arc(s[0][0], s[0][1], LINE_WIDTH / 2, 0, 2 * Math.PI);
        ctx.fill();
        continue;
      }
      ctx.beginPath();
      ctx.moveTo(s[0][0], s[0][1]);
      for (let i = 1; i < s.length; i++) ctx.lineTo(s[i][0], s[i][1]);
      ctx.stroke();
    }
    canvas.dataset.strokes = String(drawn);
    canvas.dataset.points = String(points);
    canvas.setAttribute(
      "aria-label",
      drawn ? `The pupil's canvas, ${drawn} stroke${drawn === 1 ? "" : "s"}` : "The pupil's canvas, empty",
    );
    const note = $("canvas-note");
    note.hidden = !this.closedCanvas;
    note.textContent = this.closedCanvas ? "The canvas page is closed." : "";
    this.showPrediction();
  }

  showPrediction() {
    $("mode").textContent = this.mode ? MODE_NAMES[this.mode] || this.mode : "\u00a0";
    const p = this.prediction;
    $("result").dataset.state = p ? "shown" : "empty";
    $("pred-label").textContent = p ? p.label : "?";
    $("pred-conf").textContent = p ? `${pct(p.confidence)} sure` : "";
    const list = $("pred-top");
    list.replaceChildren();
    for (const item of (p && p.top) || []) {
      const li = document.createElement("li");
      li.dataset.label = item.label;
      li.textContent = `${item.label} ${pct(item.p)}`;
      list.append(li);
    }
    const c = $("correction");
    c.dataset.label = this.correction || "";
    c.textContent = this.correction ? `The pupil corrected it to ${this.correction}` : "";
    // The page clears its drawing once an answer is saved: the answer stays in view.
    const a = $("answer");
    const answer = this.answer;
    a.hidden = !answer || Boolean(this.correction);
    a.dataset.kind = answer ? answer.kind : "";
    a.dataset.label = answer ? answer.label : "";
    if (!answer) a.textContent = "";
    else if (answer.kind === "confirmation") a.textContent = `Last answer: ${answer.label}, the guess kept as right`;
    else if (answer.predicted && answer.predicted !== answer.label)
      a.textContent = `Last answer: corrected from ${answer.predicted} to ${answer.label}`;
    else a.textContent = `Last answer: corrected to ${answer.label}`;
  }
}

const page = new ViewerPage();
page.start();
window.hwrViewer = page; // for looking at the page's state from the browser's console
