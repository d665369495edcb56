import { escapeXml, niceTicks } from "../svg-chart.js";
import type { TrainHistory } from "../../core/train/loop.js";

/*
 * The loss curve as a self-contained SVG: training loss per step (faint) with its moving average,
 * and the validation loss at each evaluation (points joined by a line), against the step.
 */

const WIDTH = 800, HEIGHT = 480;
const MARGIN = { left: 64, right: 24, top: 40, bottom: 48 };
const TICKS = 6;
/** Steps averaged in the smoothed training curve. */
const SMOOTH_WINDOW = 25;
const COLORS = { raw: "#9ecae1", train: "#2171b5", val: "#d94801", grid: "#e0e0e0", text: "#333" };

export function lossCurveSvg(h: TrainHistory, title: string): string {
  const steps = [...h.train.map(([s]) => s), ...h.val.map(([s]) => s)];
  const losses = [...h.train.map(([, l]) => l), ...h.val.map(([, l]) => l)].filter(Number.isFinite);
  const x1 = Math.max(1, ...steps), y0 = losses.length ? Math.min(...losses) : 0, y1 = losses.length ? Math.max(...losses) : 1;
  const pw = WIDTH - MARGIN.left - MARGIN.right, ph = HEIGHT - MARGIN.top - MARGIN.bottom;
  const X = (s: number) => MARGIN.left + (s / x1) * pw;
  const Y = (l: number) => MARGIN.top + (1 - (l - y0) / (y1 - y0 || 1)) * ph;
  const path = (pts: Array<[number, number]>) => pts.filter(([, l]) => Number.isFinite(l)).map(([s, l], i) => `${i ? "L" : "M"}${X(s).toFixed(1)},${Y(l).toFixed(1)}`).join("");
  const smooth: Array<[number, number]> = [];
  let acc = 0;
  h.train.forEach(([s, l], i) => {
    acc += l;
    if (i >= SMOOTH_WINDOW) acc -= h.train[i - SMOOTH_WINDOW][1];
    smooth.push([s, acc / Math.min(i + 1, SMOOTH_WINDOW)]);
  });
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${WIDTH / 2}" y="22" text-anchor="middle" font-size="15" fill="${COLORS.text}">${escapeXml(title)}</text>`,
  ];
  for (const t of niceTicks(y0, y1, TICKS)) {
    parts.push(`<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${Y(t).toFixed(1)}" y2="${Y(t).toFixed(1)}" stroke="${COLORS.grid}"/>`);
    parts.push(`<text x="${MARGIN.left - 6}" y="${(Y(t) + 4).toFixed(1)}" text-anchor="end" fill="${COLORS.text}">${t}</text>`);
  }
  for (const t of niceTicks(0, x1, TICKS)) {
    parts.push(`<line x1="${X(t).toFixed(1)}" x2="${X(t).toFixed(1)}" y1="${MARGIN.top}" y2="${HEIGHT - MARGIN.bottom}" stroke="${COLORS.grid}"/>`);
    parts.push(`<text x="${X(t).toFixed(1)}" y="${HEIGHT - MARGIN.bottom + 16}" text-anchor="middle" fill="${COLORS.text}">${t}</text>`);
  }
  parts.push(`<text x="${MARGIN.left + pw / 2}" y="${HEIGHT - 10}" text-anchor="middle" fill="${COLORS.text}">step</text>`);
  parts.push(`<text transform="translate(16 ${MARGIN.top + ph / 2}) rotate(-90)" text-anchor="middle" fill="${COLORS.text}">loss (nats/token)</text>`);
  parts.push(`<path d="${path(h.train)}" fill="none" stroke="${COLORS.raw}" stroke-width="1"/>`);
  parts.push(`<path d="${path(smooth)}" fill="none" stroke="${COLORS.train}" stroke-width="2"/>`);
  if (h.val.length) {
    parts.push(`<path d="${path(h.val.map(([s, l]) => [s, l]))}" fill="none" stroke="${COLORS.val}" stroke-width="2"/>`);
    for (const [s, l] of h.val) if (Number.isFinite(l)) parts.push(`<circle cx="${X(s).toFixed(1)}" cy="${Y(l).toFixed(1)}" r="3" fill="${COLORS.val}"/>`);
  }
  const lastVal = h.val.length ? h.val[h.val.length - 1][1] : NaN;
  parts.push(`<text x="${WIDTH - MARGIN.right - 200}" y="${MARGIN.top + 16}" fill="${COLORS.train}">— train (avg of ${SMOOTH_WINDOW})</text>`);
  parts.push(`<text x="${WIDTH - MARGIN.right - 200}" y="${MARGIN.top + 32}" fill="${COLORS.val}">— validation${Number.isFinite(lastVal) ? ` (last ${lastVal.toFixed(4)})` : ""}</text>`);
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
