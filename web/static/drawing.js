// The drawing pad: strokes kept in 280x280 logical coordinates (y down), drawn crisp at any
// pixel ratio. The pad only records and paints; it never turns the drawing into an image.

export const SIZE = 280;
// Bounds the server enforces (hwrcore.preprocess): the pad stops before it would exceed them.
export const MAX_STROKES = 64;
export const MAX_POINTS = 4096;
// Points closer than this (logical pixels) to the last kept one add nothing but bytes.
const MIN_STEP = 1.5;
const INK = "#111827";
const PAPER = "#ffffff";
const LINE_WIDTH = 14;
// Writing guide lines (letters): a top line, a dashed midline and a baseline, in logical pixels.
// They are painted only: never part of the strokes, so they never reach the model.
export const GUIDES = { top: 60, mid: 130, base: 200 };
const GUIDE_COLOUR = "#93a3b8";
const GUIDE_WIDTH = 1.5;

const round1 = (v) => Math.round(v * 10) / 10;
const clamp = (v) => Math.min(SIZE, Math.max(0, v));

export class DrawingPad {
  /**
   * canvas: the <canvas>; handlers: onStrokeStart(), onStrokeMove(), onStrokeEnd(), onFull().
   */
  constructor(canvas, handlers = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.handlers = handlers;
    this.strokes = [];
    this.current = null;
    this.pointerId = null;
    this.guides = false;

    canvas.addEventListener("pointerdown", (e) => this.#down(e));
    canvas.addEventListener("pointermove", (e) => this.#move(e));
    canvas.addEventListener("pointerup", (e) => this.#up(e));
    canvas.addEventListener("pointercancel", (e) => this.#up(e));
    canvas.addEventListener("lostpointercapture", (e) => this.#up(e));
    // Browsers without touch-action still scroll, zoom or open menus on a long press.
    for (const type of ["touchstart", "touchmove", "contextmenu", "dragstart", "selectstart"]) {
      canvas.addEventListener(type, (e) => e.preventDefault(), { passive: false });
    }
    new ResizeObserver(() => this.#resize()).observe(canvas);
    this.#watchPixelRatio();
    this.#resize();
  }

  /** Whether a stroke is being drawn right now. */
  get drawing() {
    return this.current !== null;
  }

  /** Whether there is any ink to read. */
  get empty() {
    return this.strokes.every((s) => s.length === 0);
  }

  /** Number of points over all strokes (the server bounds it). */
  pointCount() {
    return this.strokes.reduce((n, s) => n + s.length, 0);
  }

  /** The longer side of the ink's bounding box, in logical pixels (0 when empty). */
  extent() {
    const pts = this.strokes.flat();
    if (pts.length === 0) return 0;
    const xs = pts.map((p) => p[0]);
    const ys = pts.map((p) => p[1]);
    return Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys));
  }

  /** A copy of the strokes as the wire protocol wants them: [[[x, y], ...], ...]. */
  snapshot() {
    return this.strokes.filter((s) => s.length > 0).map((s) => s.map((p) => [p[0], p[1]]));
  }

  /** Show or hide the writing guide lines (display only). */
  setGuides(on) {
    if (this.guides === Boolean(on)) return;
    this.guides = Boolean(on);
    this.canvas.dataset.guides = String(this.guides);
    this.redraw();
  }

  /** Put strokes back on the pad (after a saved answer is taken back). */
  restore(strokes) {
    this.#endStroke(false);
    this.strokes = strokes.map((s) => s.map((p) => [p[0], p[1]]));
    this.redraw();
  }

  /** Remove the last stroke; returns whether anything was removed. */
  undo() {
    if (this.drawing || this.strokes.length === 0) return false;
    this.strokes.pop();
    this.redraw();
    return true;
  }

  /** Remove every stroke; returns whether anything was removed. */
  clear() {
    this.#endStroke(false);
    const had = this.strokes.length > 0;
    this.strokes = [];
    this.redraw();
    return had;
  }

  /** Paint the paper and every stroke at the current backing-store resolution. */
  redraw() {
    const { ctx, canvas } = this;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = PAPER;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(canvas.width / SIZE, 0, 0, canvas.height / SIZE, 0, 0);
    if (this.guides) this.#paintGuides();
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = LINE_WIDTH;
    ctx.strokeStyle = INK;
    ctx.fillStyle = INK;
    for (const stroke of this.strokes) this.#paint(stroke, 0);
    this.canvas.dataset.strokes = String(this.strokes.length);
  }

  #paintGuides() {
    const { ctx } = this;
    ctx.save();
    ctx.strokeStyle = GUIDE_COLOUR;
    ctx.lineWidth = GUIDE_WIDTH;
    ctx.lineCap = "butt";
    for (const [y, dash] of [
      [GUIDES.top, []],
      [GUIDES.mid, [8, 6]],
      [GUIDES.base, []],
    ]) {
      ctx.setLineDash(dash);
      ctx.beginPath();
      ctx.moveTo(8, y);
      ctx.lineTo(SIZE - 8, y);
      ctx.stroke();
    }
    ctx.restore();
  }

  #paint(stroke, from) {
    const { ctx } = this;
    if (stroke.length === 1) {
      ctx.beginPath();
      ctx.arc(stroke[0][0], stroke[0][1], LINE_WIDTH / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    const start = Math.max(0, from - 1);
    ctx.moveTo(stroke[start][0], stroke[start][1]);
    for (let i = start + 1; i < stroke.length; i++) ctx.lineTo(stroke[i][0], stroke[i][1]);
    ctx.stroke();
  }

  #resize() {
    // Backing store = CSS size x devicePixelRatio, so strokes stay sharp on high-DPI screens.
    const r = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(r.width * dpr);
    const h = Math.round(r.height * dpr);
    if (w > 0 && h > 0 && (w !== this.canvas.width || h !== this.canvas.height)) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    this.redraw();
  }

  #watchPixelRatio() {
    // Zooming or moving the window to another screen changes the ratio but not the CSS size.
    const query = window.matchMedia(`(resolution: ${window.devicePixelRatio || 1}dppx)`);
    query.addEventListener(
      "change",
      () => {
        this.#resize();
        this.#watchPixelRatio();
      },
      { once: true },
    );
  }

  /** The pointer's position in logical pixels, unclamped. */
  #raw(e) {
    const r = this.canvas.getBoundingClientRect();
    return [((e.clientX - r.left) * SIZE) / (r.width || 1), ((e.clientY - r.top) * SIZE) / (r.height || 1)];
  }

  #point(e) {
    const [x, y] = this.#raw(e);
    return [round1(clamp(x)), round1(clamp(y))];
  }

  /** Where the segment from the last kept point towards an outside point crosses the edge. */
  #edgePoint(outside) {
    const s = this.current;
    const [x0, y0] = s[s.length - 1];
    const [x1, y1] = outside;
    let t = 1;
    for (const [a, b] of [
      [x0, x1],
      [y0, y1],
    ]) {
      if (b < 0) t = Math.min(t, a / (a - b));
      else if (b > SIZE) t = Math.min(t, (SIZE - a) / (b - a));
    }
    t = Math.max(0, Math.min(1, t));
    return [round1(clamp(x0 + (x1 - x0) * t)), round1(clamp(y0 + (y1 - y0) * t))];
  }

  #add(p, force) {
    const s = this.current;
    const last = s[s.length - 1];
    const far = Math.hypot(p[0] - last[0], p[1] - last[1]) >= MIN_STEP;
    const moved = p[0] !== last[0] || p[1] !== last[1];
    if ((far || (force && moved)) && this.pointCount() < MAX_POINTS) {
      s.push(p);
      return true;
    }
    return false;
  }

  #down(e) {
    if (this.pointerId !== null) return; // one finger at a time: a resting palm is ignored
    if (e.pointerType === "mouse" && e.button !== 0) return;
    e.preventDefault();
    if (this.strokes.length >= MAX_STROKES || this.pointCount() >= MAX_POINTS) {
      this.handlers.onFull?.();
      return;
    }
    this.pointerId = e.pointerId;
    try {
      this.canvas.setPointerCapture(e.pointerId);
    } catch {
      // The pointer is already gone (released between the event and this call).
    }
    this.current = [this.#point(e)];
    this.strokes.push(this.current);
    this.#paint(this.current, 0);
    this.canvas.dataset.strokes = String(this.strokes.length);
    this.handlers.onStrokeStart?.();
  }

  #move(e) {
    if (e.pointerId !== this.pointerId || !this.current) return;
    e.preventDefault();
    const coalesced = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
    const from = this.current.length;
    let added = false;
    let left = false;
    for (const ev of coalesced.length ? coalesced : [e]) {
      const [x, y] = this.#raw(ev);
      if (x < 0 || y < 0 || x > SIZE || y > SIZE) {
        // A finger sliding off the pad ends the stroke where it crossed the edge, instead of
        // drawing along the border.
        this.#add(this.#edgePoint([x, y]), true);
        left = true;
        break;
      }
      added = this.#add([round1(x), round1(y)], false) || added;
    }
    if (added || left) this.#paint(this.current, from);
    if (left) {
      this.#endStroke();
      return;
    }
    if (added) this.handlers.onStrokeMove?.();
    if (this.pointCount() >= MAX_POINTS) {
      this.#endStroke();
      this.handlers.onFull?.();
    }
  }

  #up(e) {
    if (e.pointerId !== this.pointerId || !this.current) return;
    if (e.type === "pointerup") {
      const [x, y] = this.#raw(e);
      const inside = x >= 0 && y >= 0 && x <= SIZE && y <= SIZE;
      const from = this.current.length;
      const p = inside ? [round1(x), round1(y)] : this.#edgePoint([x, y]);
      if (this.#add(p, true)) this.#paint(this.current, from);
    }
    this.#endStroke();
  }

  #endStroke(notify = true) {
    if (!this.current) return;
    const id = this.pointerId;
    this.current = null;
    this.pointerId = null;
    if (id !== null && this.canvas.hasPointerCapture?.(id)) this.canvas.releasePointerCapture(id);
    if (notify) this.handlers.onStrokeEnd?.();
  }
}
