/*
 * Line charts as self-contained SVG (no dependencies): one or more panels stacked over a shared
 * x axis, each with its own y axis and series. Marked points get a circle and a <title> with their
 * exact values, so the numbers can be read back from the file (hover in a browser, or a parser).
 */

export interface Series {
  readonly label: string;
  readonly color: string;
  readonly points: ReadonlyArray<readonly [number, number]>;
  readonly dashed?: boolean;
}

export interface Mark {
  readonly x: number;
  readonly y: number;
  /** Shown beside the point and in its tooltip. */
  readonly text: string;
}

export interface Panel {
  readonly yLabel: string;
  readonly series: readonly Series[];
  readonly marks?: readonly Mark[];
  /** Lower end of the y axis (default: 0, so flat lines look flat). */
  readonly yMin?: number;
}

export interface ChartOptions {
  readonly title: string;
  readonly xLabel: string;
  readonly panels: readonly Panel[];
  /** Lines under the title (settings, machine). */
  readonly subtitle?: readonly string[];
}

const WIDTH = 880;
const PANEL_HEIGHT = 280;
const PANEL_GAP = 36;
const MARGIN = { left: 80, right: 32, top: 56, bottom: 52 };
const SUBTITLE_LINE = 15;
const TICKS = 6;
/** The y axis reaches this much above the data: room for the legend and the labels of marks. */
const HEADROOM = 1.3;
/** Approximate width of a character and height of a line of the 11 px mark labels. */
const LABEL_CHAR_WIDTH = 6;
const LABEL_LINE = 14;
const COLORS = { grid: "#e0e0e0", text: "#333", axis: "#999" };

export function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/** "Nice" tick values (1, 2, 5 × 10^k steps) covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, n: number): number[] {
  const span = hi - lo || 1;
  const raw = span / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= n) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** 12000 -> "12k", 0.5 -> "0.5": tick labels that fit. */
function tickLabel(v: number): string {
  const K = 1000;
  if (Math.abs(v) >= K * K) return `${Number((v / (K * K)).toPrecision(6))}M`;
  if (Math.abs(v) >= K) return `${Number((v / K).toPrecision(6))}k`;
  return String(Number(v.toPrecision(6)));
}

export function lineChartSvg(o: ChartOptions): string {
  const sub = o.subtitle ?? [];
  const top = MARGIN.top + sub.length * SUBTITLE_LINE;
  const height = top + o.panels.length * PANEL_HEIGHT + (o.panels.length - 1) * PANEL_GAP + MARGIN.bottom;
  const pw = WIDTH - MARGIN.left - MARGIN.right;
  const xs = o.panels.flatMap((p) => p.series.flatMap((s) => s.points.map(([x]) => x)));
  const x0 = 0, x1 = xs.length ? Math.max(...xs) : 1;
  const X = (x: number) => MARGIN.left + ((x - x0) / (x1 - x0 || 1)) * pw;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${height}" fill="white"/>`,
    `<text x="${WIDTH / 2}" y="24" text-anchor="middle" font-size="16" fill="${COLORS.text}">${escapeXml(o.title)}</text>`,
    ...sub.map((line, i) => `<text x="${WIDTH / 2}" y="${44 + i * SUBTITLE_LINE}" text-anchor="middle" font-size="11" fill="${COLORS.text}">${escapeXml(line)}</text>`),
  ];
  o.panels.forEach((panel, pi) => {
    const py = top + pi * (PANEL_HEIGHT + PANEL_GAP);
    const ys = panel.series.flatMap((s) => s.points.map(([, y]) => y)).filter(Number.isFinite);
    const y0 = panel.yMin ?? 0, y1 = y0 + (Math.max(y0 + 1e-9, ...ys) - y0) * HEADROOM;
    const Y = (y: number) => py + (1 - (y - y0) / (y1 - y0)) * PANEL_HEIGHT;
    for (const t of niceTicks(y0, y1, TICKS)) {
      parts.push(`<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${Y(t).toFixed(1)}" y2="${Y(t).toFixed(1)}" stroke="${COLORS.grid}"/>`);
      parts.push(`<text x="${MARGIN.left - 6}" y="${(Y(t) + 4).toFixed(1)}" text-anchor="end" fill="${COLORS.text}">${tickLabel(t)}</text>`);
    }
    for (const t of niceTicks(x0, x1, TICKS)) {
      parts.push(`<line x1="${X(t).toFixed(1)}" x2="${X(t).toFixed(1)}" y1="${py}" y2="${py + PANEL_HEIGHT}" stroke="${COLORS.grid}"/>`);
      parts.push(`<text x="${X(t).toFixed(1)}" y="${py + PANEL_HEIGHT + 16}" text-anchor="middle" fill="${COLORS.text}">${tickLabel(t)}</text>`);
    }
    parts.push(`<rect x="${MARGIN.left}" y="${py}" width="${pw}" height="${PANEL_HEIGHT}" fill="none" stroke="${COLORS.axis}"/>`);
    parts.push(`<text transform="translate(18 ${py + PANEL_HEIGHT / 2}) rotate(-90)" text-anchor="middle" fill="${COLORS.text}">${escapeXml(panel.yLabel)}</text>`);
    panel.series.forEach((s, si) => {
      const d = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y))
        .map(([x, y], i) => `${i ? "L" : "M"}${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join("");
      parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"${s.dashed ? ` stroke-dasharray="6 4"` : ""}><title>${escapeXml(s.label)}</title></path>`);
      parts.push(`<text x="${MARGIN.left + 10}" y="${py + 18 + si * 16}" fill="${s.color}">${s.dashed ? "- -" : "—"} ${escapeXml(s.label)}</text>`);
    });
    const placed: Array<{ x0: number; x1: number; y: number }> = [];
    for (const m of panel.marks ?? []) {
      const cx = X(m.x).toFixed(1), cy = Y(m.y).toFixed(1);
      parts.push(`<circle cx="${cx}" cy="${cy}" r="4" fill="${COLORS.text}"><title>${escapeXml(m.text)}</title></circle>`);
      const right = X(m.x) > MARGIN.left + pw * 0.8;
      const w = m.text.length * LABEL_CHAR_WIDTH;
      const x0 = right ? X(m.x) - 8 - w : X(m.x) + 8;
      // Labels of nearby marks at similar heights would overprint: move each above those it meets.
      let y = Y(m.y) - 8;
      while (placed.some((p) => p.x0 < x0 + w && x0 < p.x1 && Math.abs(p.y - y) < LABEL_LINE)) y -= LABEL_LINE;
      placed.push({ x0, x1: x0 + w, y });
      parts.push(`<text x="${right ? X(m.x) - 8 : X(m.x) + 8}" y="${y.toFixed(1)}" text-anchor="${right ? "end" : "start"}" font-size="11" fill="${COLORS.text}">${escapeXml(m.text)}</text>`);
    }
  });
  parts.push(`<text x="${MARGIN.left + pw / 2}" y="${height - 12}" text-anchor="middle" fill="${COLORS.text}">${escapeXml(o.xLabel)}</text>`);
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
