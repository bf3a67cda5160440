-- Running totals of the reversal, so the transaction service can export them as metrics
-- (the reversal itself runs as a short-lived CronJob that Prometheus cannot scrape).
-- One row, updated once per run.
CREATE TABLE reversal_stats (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    runs        bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0,   -- voided at wallet and marked FAILED
    completed   bigint NOT NULL DEFAULT 0,   -- found posted at wallet and marked COMPLETED
    last_run_at timestamptz
);
INSERT INTO reversal_stats (id) VALUES (true);
