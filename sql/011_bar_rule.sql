-- When two sources produce a bar for the same (symbol, hour), the bars are never mixed: one is
-- kept whole. This file is that rule, written once; the rollup's upsert, the backfill's choice
-- of hours and `etl status` all call it.
--
-- Coverage: the share of the hour a bar saw, samples * interval / 3600, capped at 1. A kline bar
-- counts minutes (interval 60 s); a bar without a recorded interval uses the configured one.
CREATE OR REPLACE FUNCTION etl_bar_coverage(
    source text, samples integer, interval_s double precision, default_interval_s double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE
AS $$
    SELECT least(1.0, samples * coalesce(interval_s,
        CASE WHEN source = 'kline' THEN 60.0 ELSE default_interval_s END) / 3600.0)
$$;

-- Tiers, best first: 3 a complete trade bar, 2 a poll bar with at least full_coverage, 1 a
-- kline bar (the exchange's own minutes), 0 a thinner poll bar.
CREATE OR REPLACE FUNCTION etl_bar_tier(source text, coverage double precision,
                                        full_coverage double precision)
RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE
        WHEN source = 'trade' AND coverage >= 1.0 THEN 3
        WHEN source = 'poll' AND coverage >= full_coverage - 1e-9 THEN 2
        WHEN source = 'kline' THEN 1
        ELSE 0
    END
$$;

-- Does the new bar replace the old one?
-- 1. A bar from the same producer (same source and staging file) always does: it is a re-read
--    of the same data (late ticks, --rerun, a backfill fetched again).
-- 2. Otherwise the higher tier wins, then the higher coverage, then more samples.
-- 3. A tie keeps the bar already there: running anything twice changes nothing.
CREATE OR REPLACE FUNCTION etl_bar_replaces(
    new_source text, new_staging uuid, new_samples integer, new_interval double precision,
    old_source text, old_staging uuid, old_samples integer, old_interval double precision,
    default_interval_s double precision, full_coverage double precision)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE
        WHEN new_source = old_source AND new_staging IS NOT DISTINCT FROM old_staging THEN true
        ELSE (etl_bar_tier(new_source,
                           etl_bar_coverage(new_source, new_samples, new_interval, default_interval_s),
                           full_coverage),
              etl_bar_coverage(new_source, new_samples, new_interval, default_interval_s),
              new_samples)
           > (etl_bar_tier(old_source,
                           etl_bar_coverage(old_source, old_samples, old_interval, default_interval_s),
                           full_coverage),
              etl_bar_coverage(old_source, old_samples, old_interval, default_interval_s),
              old_samples)
    END
$$;
