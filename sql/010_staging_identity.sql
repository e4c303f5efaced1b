-- Several staging files may feed one warehouse: collectors on other machines, or collectors
-- splitting the symbol list. The ledger is kept per (staging file, hour), and a staging file's
-- ticks are purged only against its own rows. Ledger rows written before staging files had an
-- identity keep the all-zero id: no staging file has it, so none purges against them.
ALTER TABLE rollup_runs ADD COLUMN IF NOT EXISTS staging_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000000';
ALTER TABLE rollup_runs ADD COLUMN IF NOT EXISTS staging_name text NOT NULL
    DEFAULT 'before staging identity';
-- Bars of this file and hour that are not in metrics_hourly because another source's bar for
-- the same (symbol, hour) won (see etl_bar_replaces), counted when it happened.
ALTER TABLE rollup_runs ADD COLUMN IF NOT EXISTS bars_lost integer NOT NULL DEFAULT 0;
ALTER TABLE rollup_runs ALTER COLUMN staging_id DROP DEFAULT;
ALTER TABLE rollup_runs ALTER COLUMN staging_name DROP DEFAULT;
ALTER TABLE rollup_runs DROP CONSTRAINT IF EXISTS rollup_runs_pkey;
ALTER TABLE rollup_runs ADD CONSTRAINT rollup_runs_pkey PRIMARY KEY (staging_id, hour);

COMMENT ON COLUMN rollup_runs.max_seq IS
    'Last staging row (seq) the rollup read for this hour, in this staging file''s numbering.';

-- Which staging file a poll bar came from (NULL for kline bars and bars older than this
-- column), and the poll interval its ticks were collected at: samples * interval_s / 3600 is
-- the bar's coverage.
ALTER TABLE metrics_hourly ADD COLUMN IF NOT EXISTS staging_id uuid;
ALTER TABLE metrics_hourly ADD COLUMN IF NOT EXISTS interval_s double precision;
