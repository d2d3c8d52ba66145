// The dashboard's arithmetic, apart from the page (no DOM, tested under Node: tests/js/).
//
// Every worker publishes a snapshot of its own figures every `interval` seconds
// (megaphone/dashboard.py): its connections and subscriptions now, and its message rates, which
// the worker computes itself from its own counters over its own clock. Figures keeps the latest
// snapshot of each worker and adds up those of the live ones: a worker not heard from for
// STALE_INTERVALS of its intervals has stopped, and drops out. It never takes a difference
// between two workers' snapshots. Times are the workers' wall clocks, in seconds.

export const STALE_INTERVALS = 3;

/** The latest figures of every worker, and their sums over time (`series`). */
export class Figures {
  constructor(window = 600) {
    this.window = window; // seconds of series kept
    this.workers = new Map(); // worker id -> its latest snapshot
    this.series = []; // {t, connections, subscriptions, published, delivered, workers}
  }

  /** Take one worker's snapshot (from history or live, in the order they were published) and
   * add the sums at its time to the series. */
  add(snapshot) {
    this.workers.set(snapshot.worker, snapshot);
    const sum = this.totals(snapshot.time);
    this.series.push({
      t: snapshot.time,
      connections: sum.connections,
      subscriptions: sum.subscriptions,
      published: sum.published,
      delivered: sum.delivered,
      workers: sum.workers,
    });
    while (this.series.length && this.series[0].t < snapshot.time - this.window) this.series.shift();
  }

  /** The snapshots of the workers heard from within STALE_INTERVALS of their interval of `now`;
   * the others are forgotten. */
  live(now) {
    for (const [worker, snapshot] of this.workers) {
      if (now - snapshot.time > STALE_INTERVALS * snapshot.interval) this.workers.delete(worker);
    }
    return [...this.workers.values()];
  }

  /** The figures of every live worker at `now`, added up. `topics` is a range: a topic served by
   * several workers is counted by each, so the number of distinct topics is at least the
   * largest worker's count and at most their sum. Topic lists (application, internal) add up
   * the subscribers each worker reports among its busiest. */
  totals(now) {
    const live = this.live(now);
    const sum = {
      workers: live.length,
      connections: 0,
      subscriptions: 0,
      published: 0,
      delivered: 0,
      topics: { least: 0, most: 0 },
      busiest: new Map(),
      internal: new Map(),
    };
    for (const snapshot of live) {
      sum.connections += snapshot.connections;
      sum.subscriptions += snapshot.subscriptions;
      sum.published += snapshot.published_per_s;
      sum.delivered += snapshot.delivered_per_s;
      sum.topics.least = Math.max(sum.topics.least, snapshot.topics);
      sum.topics.most += snapshot.topics;
      for (const [key, list] of [["busiest", snapshot.busiest], ["internal", snapshot.internal ?? []]]) {
        for (const { topic, subscribers } of list) {
          sum[key].set(topic, (sum[key].get(topic) ?? 0) + subscribers);
        }
      }
    }
    return sum;
  }
}
