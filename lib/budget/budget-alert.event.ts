/**
 * A budget crossed an alert threshold. Fired once per threshold, period and subject, across instances
 * (the store decides which instance fires it).
 */
export interface BudgetAlertEvent {
  scope: 'user' | 'project';
  /** The user, for `scope: 'user'`. */
  user?: string;
  period: 'day' | 'month';
  /** Fraction of the limit crossed (e.g. 0.8). */
  threshold: number;
  /** Spend so far in the period, in-flight reservations included (USD). */
  spentUsd: number;
  limitUsd: number;
  /** Start of the period (ISO 8601, UTC). */
  periodStart: string;
}
