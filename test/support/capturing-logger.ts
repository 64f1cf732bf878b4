import type { LoggerService } from '@nestjs/common';

export interface CapturedLine {
  level: 'log' | 'error' | 'warn' | 'debug' | 'verbose' | 'fatal';
  message: unknown;
  context?: string;
}

/** A Nest logger that keeps every line, for assertions on what the app logged. */
export class CapturingLogger implements LoggerService {
  readonly lines: CapturedLine[] = [];
  private push(level: CapturedLine['level'], message: unknown, rest: unknown[]) {
    const context = typeof rest[rest.length - 1] === 'string' ? (rest[rest.length - 1] as string) : undefined;
    this.lines.push({ level, message, context });
  }
  log(message: unknown, ...rest: unknown[]) {
    this.push('log', message, rest);
  }
  error(message: unknown, ...rest: unknown[]) {
    this.push('error', message, rest);
  }
  warn(message: unknown, ...rest: unknown[]) {
    this.push('warn', message, rest);
  }
  debug(message: unknown, ...rest: unknown[]) {
    this.push('debug', message, rest);
  }
  verbose(message: unknown, ...rest: unknown[]) {
    this.push('verbose', message, rest);
  }
  fatal(message: unknown, ...rest: unknown[]) {
    this.push('fatal', message, rest);
  }

  /** Structured lines (objects) whose `msg` equals `msg`. */
  records(msg: string): Array<Record<string, unknown>> {
    return this.lines
      .map((l) => l.message)
      .filter(
        (m): m is Record<string, unknown> =>
          typeof m === 'object' && m !== null && (m as { msg?: unknown }).msg === msg,
      );
  }

  /** Everything logged, serialized: for "never appears in any log line" assertions. */
  text(): string {
    return this.lines
      .map((l) => (typeof l.message === 'string' ? l.message : JSON.stringify(l.message)))
      .join('\n');
  }
}
