// Unit tests of the dashboard's arithmetic (dashboard-figures.js) under Node: the workers' own
// rates are added up, never differenced across workers; silent workers drop out.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Figures, STALE_INTERVALS } from "../../src/megaphone/static/megaphone/dashboard-figures.js";

function snapshot(worker, time, { published = 10, delivered = 100, counters = 0, ...rest } = {}) {
  return {
    worker,
    time,
    interval: 2,
    connections: 3,
    subscriptions: 4,
    topics: 2,
    published: counters, // cumulative counters differ wildly between workers
    delivered: counters * 10,
    published_per_s: published,
    delivered_per_s: delivered,
    busiest: [{ topic: "news", subscribers: 2 }],
    internal: [{ topic: "_megaphone.stats", subscribers: 1 }],
    ...rest,
  };
}

test("the latest rates of every worker are added up, whatever their counters", () => {
  const figures = new Figures();
  // Two workers, a few ms apart, with very different cumulative counters: the old page took
  // the rate between these two snapshots and showed thousands of messages per second.
  figures.add(snapshot("a", 1000.0, { counters: 5 }));
  figures.add(snapshot("b", 1000.004, { counters: 9000 }));
  figures.add(snapshot("a", 1002.0, { counters: 25, published: 12 }));
  const sum = figures.totals(1002.1);
  assert.equal(sum.workers, 2);
  assert.equal(sum.published, 22);
  assert.equal(sum.delivered, 200);
  assert.equal(sum.connections, 6);
  assert.equal(sum.subscriptions, 8);
  assert.deepEqual(sum.topics, { least: 2, most: 4 });
  assert.deepEqual([...sum.busiest], [["news", 4]]);
  assert.deepEqual([...sum.internal], [["_megaphone.stats", 2]]);
  assert.deepEqual(
    figures.series.map((point) => point.published),
    [10, 20, 22],
  );
});

test("a worker not heard from for a few of its intervals drops out", () => {
  const figures = new Figures();
  figures.add(snapshot("a", 1000));
  figures.add(snapshot("b", 1000));
  const late = 1000 + STALE_INTERVALS * 2 + 0.5;
  figures.add(snapshot("a", late));
  const sum = figures.totals(late);
  assert.equal(sum.workers, 1);
  assert.equal(sum.published, 10);
  assert.equal(figures.series.at(-1).workers, 1);
  assert.equal(figures.totals(late + STALE_INTERVALS * 2 + 1).workers, 0);
});

test("the series keeps the window and no more", () => {
  const figures = new Figures(60);
  for (let t = 0; t <= 120; t += 2) figures.add(snapshot("a", 1000 + t));
  assert.equal(figures.series[0].t, 1060);
  assert.equal(figures.series.at(-1).t, 1120);
});
