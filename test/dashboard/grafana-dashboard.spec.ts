import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OpenAIMetricsService } from '../../lib/index.js';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { TEST_API_KEY, fixtureOptions, startFixtureApp, type FixtureHandle } from '../support/fixture-app.js';
import { userMessage } from '../support/sample-app.js';

const DASHBOARD = join(process.cwd(), 'lib/metrics/grafana-dashboard.json');

interface Target {
  refId: string;
  expr: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  targets?: Target[];
  panels?: Panel[];
  options?: { content?: string };
  datasource?: { type?: string; uid?: string };
}

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: Panel[]; templating: unknown };
const panels: Panel[] = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const targets = panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, ...t })));

/** Labels Prometheus adds on scrape, and the histogram's bucket label. */
const SCRAPE_LABELS = ['job', 'instance', 'le'];
/** PromQL's function and aggregation names, keywords: identifiers that are not metrics. */
const NOT_METRICS = new Set(
  'sum rate increase irate histogram_quantile max min avg count by without or and unless vector on ignoring group_left group_right offset'.split(
    ' ',
  ),
);

/** The metric selectors, `by (...)` labels and every bare identifier of a PromQL expression. */
function parsePromQL(expr: string) {
  const code = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""'); // label values may hold anything
  const selectors = [...code.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}/g)].map((m) => ({
    metric: m[1],
    labels: [...m[2].matchAll(/([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)/g)].map((l) => l[1]),
  }));
  const grouping = [...code.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)].flatMap((m) =>
    m[1]
      .split(',')
      .map((l) => l.trim())
      .filter(Boolean),
  );
  const identifiers = [
    ...code.replace(/\[[^\]]*\]|\{[^}]*\}/g, '').matchAll(/(?<![\w$])([a-zA-Z_:][a-zA-Z0-9_:]*)/g),
  ]
    .map((m) => m[1])
    .filter((id) => !NOT_METRICS.has(id) && !grouping.includes(id) && !/^\d/.test(id));
  return { selectors, grouping, identifiers };
}

describe('the Grafana dashboard (lib/metrics/grafana-dashboard.json)', () => {
  let fake: FakeOpenAIServer;
  let h: FixtureHandle;
  /** Series name -> label names, as the live registry of a module that served a few calls exposes them. */
  const series = new Map<string, string[]>();

  let exposition = '';
  beforeAll(async () => {
    fake = await FakeOpenAIServer.start();
    h = await startFixtureApp(
      'express',
      fixtureOptions(fake.baseURL, TEST_API_KEY, { retry: { maxRetries: 0 } }),
    );
    await request(h.server).post('/chat').send(userMessage('hello'));
    fake.fault({ path: '/v1/chat/completions', status: 500, times: 1 });
    await request(h.server).post('/chat').send(userMessage('fail'));

    const registry = h.app.get(OpenAIMetricsService).registry;
    exposition = await registry.metrics();
    for (const { name } of await registry.getMetricsAsJSON()) {
      // prom-client keeps the type and label names on the collector
      const { type, labelNames } = registry.getSingleMetric(name) as unknown as {
        type: string;
        labelNames: string[];
      };
      if (type === 'histogram') {
        for (const suffix of ['_bucket', '_sum', '_count']) series.set(name + suffix, labelNames);
      } else series.set(name, labelNames);
    }
  });
  afterAll(async () => {
    await h?.close();
    await fake?.close();
  });

  it('reads the names from a registry that served a call and a failed call', () => {
    expect(exposition).toMatch(/^openai_upstream_latency_seconds_bucket\{.*le="\+Inf".*\} 1$/m);
    expect(exposition).toMatch(/^openai_upstream_errors_total\{.*\} 1$/m);
    expect(series.get('openai_tokens_total')).toEqual(['model', 'route', 'type']);
  });

  it('has panels with queries, on the datasource variable', () => {
    expect(targets.length).toBeGreaterThan(20);
    const problems = targets
      .filter(
        (t) =>
          !/\S/.test(t.expr) || t.datasource?.uid !== '${datasource}' || t.datasource?.type !== 'prometheus',
      )
      .map((t) => `${t.panel} ${t.refId}`);
    expect(problems).toEqual([]);
    expect(new Set(panels.map((p) => p.id)).size).toBe(panels.length);
    expect(JSON.stringify(dashboard.templating)).toContain('"name":"datasource"');
  });

  it('names in every query only metrics and labels the library exports', () => {
    const problems: string[] = [];
    for (const t of targets) {
      const where = `${t.panel} (${t.refId})`;
      const { selectors, grouping, identifiers } = parsePromQL(t.expr);
      if (!selectors.length) problems.push(`${where}: no metric selector in ${t.expr}`);
      // every identifier left is a metric with a selector, so no metric slips past the checks below
      for (const id of identifiers)
        if (!selectors.some((s) => s.metric === id)) problems.push(`${where}: bare identifier ${id}`);
      const labels = new Set(SCRAPE_LABELS);
      for (const s of selectors) {
        if (!series.has(s.metric)) problems.push(`${where}: ${s.metric} is not exported`);
        for (const l of series.get(s.metric) ?? []) labels.add(l);
      }
      for (const l of [...selectors.flatMap((s) => s.labels), ...grouping])
        if (!labels.has(l)) problems.push(`${where}: label ${l} is on none of its metrics`);
    }
    expect(problems).toEqual([]);
  });

  it('covers the monitoring checklist: errors, latency percentiles, tokens, cost and budgets, rate limits, moderation, storage, request IDs', () => {
    const used = new Set(targets.flatMap((t) => parsePromQL(t.expr).selectors.map((s) => s.metric)));
    const required = [
      'openai_upstream_errors_total',
      'openai_upstream_requests_total',
      'openai_upstream_latency_seconds_bucket',
      'openai_tokens_total',
      'openai_cost_usd_total',
      'openai_budget_rejections_total',
      'openai_rate_limit_rejections_total',
      'openai_moderation_checks_total',
      'openai_moderation_flags_total',
      'openai_storage_degraded',
    ];
    expect(required.filter((m) => !used.has(m))).toEqual([]);
    const exprs = targets.map((t) => t.expr).join('\n');
    for (const q of ['0.5', '0.95', '0.99']) expect(exprs).toContain(`histogram_quantile(${q},`);
    expect(exprs).toMatch(/outcome="flagged"[^/]*\/ sum by \(direction\)/); // a flag rate, not a count
    const notes = panels.filter((p) => p.type === 'text').map((p) => p.options?.content ?? '');
    expect(notes.join('\n')).toMatch(/request_id[\s\S]*openai_request_id/);
  });

  it('lays panels out without overlaps on the 24-column grid', () => {
    const boxes = panels.map((p) => ({ title: p.title, ...p.gridPos }));
    const problems: string[] = [];
    for (const b of boxes) if (b.x + b.w > 24) problems.push(`${b.title} is wider than the grid`);
    for (const [i, a] of boxes.entries())
      for (const b of boxes.slice(i + 1))
        if (a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h)
          problems.push(`${a.title} overlaps ${b.title}`);
    expect(problems).toEqual([]);
  });
});
