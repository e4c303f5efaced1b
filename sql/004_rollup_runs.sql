-- The rollup ledger: one row per committed hour.
--
-- A staged tick is deleted only when its hour is here (committed in the same transaction as the
-- bars), and only up to max_seq, the last staging row the rollup read for that hour: a tick that
-- arrives after its hour was committed is never lost. purged_at is set once the hour's staged
-- ticks are gone.
CREATE TABLE IF NOT EXISTS rollup_runs (
    hour         timestamptz PRIMARY KEY,
    symbols      integer     NOT NULL,
    rows         integer     NOT NULL,
    ticks_read   bigint      NOT NULL,
    max_seq      bigint      NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    purged_at    timestamptz
);
