// A progress report for long CLI jobs, written to stderr so stdout (the result) stays clean.
// On a terminal: one bar redrawn in place with rate and ETA. Elsewhere (a pipe, a log file, a test
// buffer): nothing for short jobs, then an occasional plain line, because carriage returns and
// escape codes would only litter a log.

/** Redraw the bar at most this often: faster is invisible and costs terminal time. */
const TTY_REDRAW_MS = 100;
/** No plain line before this much time has passed (short jobs print nothing) nor more often than this. */
const PLAIN_LINE_INTERVAL_MS = 10_000;
/** Width of the bar itself, in cells. */
const BAR_CELLS = 24;
/** Column count assumed when the terminal does not say. */
const DEFAULT_COLUMNS = 80;
const MS_PER_S = 1000;
/** ANSI: carriage return, then erase the whole line. */
const CLEAR_LINE = "\r\x1b[2K";

export interface ProgressOptions {
  /** Prefix of every report, e.g. "eval". */
  readonly label: string;
  /** What is counted, e.g. "tok". */
  readonly unit: string;
  /** Where reports go (stderr). */
  readonly write: (text: string) => void;
  /** Draw an in-place bar (a terminal) rather than occasional plain lines. */
  readonly tty: boolean;
  /** Terminal width, to keep the bar on one line. */
  readonly columns?: number;
  /** Clock in ms; injectable for tests. */
  readonly now?: () => number;
}

/** "42s", "3m05s", "1h02m". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

function formatRate(perSecond: number): string {
  if (!Number.isFinite(perSecond)) return "?";
  return perSecond >= 100 ? perSecond.toFixed(0) : perSecond.toPrecision(3);
}

export class Progress {
  private readonly start: number;
  private readonly now: () => number;
  private lastDraw = -Infinity;
  private lastLine: number;
  private drawn = false;
  private done = 0;
  private total = 0;

  constructor(private readonly options: ProgressOptions) {
    this.now = options.now ?? (() => performance.now());
    this.start = this.now();
    this.lastLine = this.start;
  }

  /** Records progress; draws when due. */
  update(done: number, total: number): void {
    this.done = done;
    this.total = total;
    const t = this.now();
    if (this.options.tty) {
      if (t - this.lastDraw < TTY_REDRAW_MS && done < total) return;
      this.lastDraw = t;
      this.drawn = true;
      this.options.write(CLEAR_LINE + this.fit(this.bar(t)));
    } else if (t - this.lastLine >= PLAIN_LINE_INTERVAL_MS) {
      this.lastLine = t;
      this.drawn = true;
      this.options.write(this.line(t) + "\n");
    }
  }

  /** Ends the report: the bar's final state on its own line, or a closing plain line if any was printed. */
  finish(): void {
    if (!this.drawn) return;
    const t = this.now();
    this.options.write(this.options.tty ? CLEAR_LINE + this.fit(this.bar(t)) + "\n" : this.line(t) + "\n");
    this.drawn = false;
  }

  /** Removes the bar without a final line (on error or cancel, before a message is printed). */
  clear(): void {
    if (this.options.tty && this.drawn) this.options.write(CLEAR_LINE);
    this.drawn = false;
  }

  private stats(t: number): { fraction: number; rate: string; eta: string; elapsed: string } {
    const elapsedS = (t - this.start) / MS_PER_S;
    const perSecond = elapsedS > 0 ? this.done / elapsedS : NaN;
    const fraction = this.total > 0 ? Math.min(1, this.done / this.total) : 0;
    const left = this.total - this.done;
    const eta = left <= 0 ? formatDuration(0) : perSecond > 0 ? formatDuration(left / perSecond) : "?";
    return { fraction, rate: formatRate(perSecond), eta, elapsed: formatDuration(elapsedS) };
  }

  private bar(t: number): string {
    const { fraction, rate, eta, elapsed } = this.stats(t);
    const full = Math.round(fraction * BAR_CELLS);
    const cells = "#".repeat(full) + "-".repeat(BAR_CELLS - full);
    const { label, unit } = this.options;
    return `${label} [${cells}] ${(fraction * 100).toFixed(0).padStart(3)}% ${this.done}/${this.total} ${unit} ${rate} ${unit}/s ${elapsed} ETA ${eta}`;
  }

  private line(t: number): string {
    const { fraction, rate, eta, elapsed } = this.stats(t);
    const { label, unit } = this.options;
    return `${label}: ${(fraction * 100).toFixed(1)}% (${this.done}/${this.total} ${unit}), ${rate} ${unit}/s, ${elapsed} elapsed, ETA ${eta}`;
  }

  /** Keeps the bar on one terminal line: a wrapped line cannot be redrawn with \r. */
  private fit(text: string): string {
    // A pseudo-terminal may report 0 columns: treat that as unknown.
    const columns = this.options.columns !== undefined && this.options.columns > 0 ? this.options.columns : DEFAULT_COLUMNS;
    const width = columns - 1; // writing the last column makes some terminals wrap
    return text.length > width ? text.slice(0, Math.max(0, width)) : text;
  }
}
