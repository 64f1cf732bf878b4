/** Percentiles, means and formatting for latency samples (milliseconds). */

export interface Summary {
  n: number;
  /** ms */
  p50: number;
  p90: number;
  p99: number;
  mean: number;
  min: number;
  max: number;
}

/** Nearest-rank percentile of sorted samples. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

export function summarize(samples: ArrayLike<number>): Summary {
  const sorted = Float64Array.from(samples as ArrayLike<number>).sort();
  let sum = 0;
  for (let i = 0; i < sorted.length; i++) sum += sorted[i]!;
  return {
    n: sorted.length,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    mean: sum / sorted.length,
    min: sorted[0] ?? NaN,
    max: sorted[sorted.length - 1] ?? NaN,
  };
}

/** Milliseconds as microseconds, e.g. `123.4 µs`; signed when `sign`. */
export function us(ms: number, sign = false): string {
  const v = ms * 1000;
  const s = v.toFixed(Math.abs(v) >= 100 ? 0 : 1);
  return sign && v >= 0 ? `+${s}` : s;
}

/** Milliseconds with 3 decimals (µs resolution). */
export function ms3(ms: number, sign = false): string {
  const s = ms.toFixed(3);
  return sign && ms >= 0 ? `+${s}` : s;
}

/** A markdown table: the first column left-aligned, the others right-aligned. */
export function table(header: string[], rows: Array<Array<string | number>>): string {
  const line = (cells: Array<string | number>) => `| ${cells.map(String).join(' | ')} |`;
  return [line(header), line(header.map((_, i) => (i === 0 ? '---' : '---:'))), ...rows.map(line)].join('\n');
}

/** A growable sample buffer that does not allocate per sample. */
export class Samples {
  private buf: Float64Array;
  length = 0;
  constructor(capacity = 16_384) {
    this.buf = new Float64Array(capacity);
  }
  push(v: number): void {
    if (this.length === this.buf.length) {
      const next = new Float64Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    this.buf[this.length++] = v;
  }
  values(): Float64Array {
    return this.buf.subarray(0, this.length);
  }
}
