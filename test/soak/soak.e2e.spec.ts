import { describe, expect, it } from 'vitest';
import { sharedRedisUrl } from '../support/redis.js';
import { formatSoakReport, runSoak } from './soak-harness.js';

// `npm run soak` runs it for minutes (SOAK_SECONDS); the test suite runs a short version.
const seconds = Number(process.env.SOAK_SECONDS ?? 25);
const users = Number(process.env.SOAK_USERS ?? (seconds > 60 ? 60 : 24));
const available = sharedRedisUrl() !== '';

describe.skipIf(!available)('soak: two instances, one Redis, a faulty upstream, Redis restarted once', () => {
  it(
    `runs ${seconds} s with ${users} users: no crash, the ledger equals the upstream log, no budget overspent, heap flat`,
    async () => {
      const report = await runSoak({
        seconds,
        users,
        budgetUsd: 0.0025,
        log: (line) => process.stderr.write(`${line}\n`),
      });
      process.stdout.write(`${formatSoakReport(report)}\n`);
      expect(report.unhandled).toEqual([]);
      expect(report.healthAfter).toEqual([200, 200]);
      expect(report.clientRequests).toBeGreaterThan(users * 5);
      expect(report.upstreamAnswered).toBeGreaterThan(0);
      expect(report.ledgerMismatches).toEqual([]);
      expect(report.ledgerRequests).toBe(report.upstreamAnswered);
      expect(report.overspent).toEqual([]);
      expect(report.heapPlateau).toBe(true);
      // every kind of fault was injected
      for (const kind of ['429', '500', 'slow reply', 'dropped connection', 'cut stream'])
        expect(report.faults[kind] ?? 0).toBeGreaterThan(0);
    },
    (seconds + 90) * 1000,
  );
});
