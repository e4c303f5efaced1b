-- supersedes: 011_bar_rule.sql
--
-- The bar rule of 011, as of this release: written out whole, so a warehouse on any earlier
-- form of it ends with exactly one definition of each function. (The line above tells etl that
-- whatever 011 a warehouse once applied, its objects are now this file's: a changed 011 is
-- not reported.)
--
-- What changed:
-- - An hour without a bar saw nothing: its coverage is 0. Callers join the hours of a range to
--   `metrics_hourly` with a LEFT JOIN, so an hour without a bar reaches etl_bar_coverage as
--   NULLs, and `least(1.0, NULL)` is 1.0 in PostgreSQL (LEAST ignores NULLs): a missing hour
--   counted as fully covered. NULL samples (or no interval at all) now give 0.
-- - A warehouse made before trade bars holds etl_bar_coverage and etl_bar_replaces without the
--   `ids_missing` arguments. Beside the new ones they make calls ambiguous, so they go.
DROP FUNCTION IF EXISTS etl_bar_replaces(
    text, uuid, integer, double precision, text, uuid, integer, double precision,
    double precision, double precision);
DROP FUNCTION IF EXISTS etl_bar_coverage(text, integer, double precision, double precision);

-- Coverage: the share of the hour a bar saw. A poll or kline bar: samples * interval / 3600,
-- capped at 1; a kline bar counts minutes (interval 60 s), a bar without a recorded interval
-- uses the configured one. A trade bar: samples / (samples + ids_missing), exactly 1 when the
-- hour's aggregate trade ids have no hole and less for each missing id. No bar: 0.
CREATE OR REPLACE FUNCTION etl_bar_coverage(
    source text, samples integer, interval_s double precision, default_interval_s double precision,
    ids_missing integer DEFAULT NULL)
RETURNS double precision
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE
        WHEN source = 'trade' THEN  -- ids_missing unknown: not proven complete
            coalesce(samples, 0)::double precision
                / greatest(1, coalesce(samples, 0) + greatest(0, coalesce(ids_missing, 1)))
        ELSE least(1.0, coalesce(samples * coalesce(interval_s,
            CASE WHEN source = 'kline' THEN 60.0 ELSE default_interval_s END) / 3600.0, 0.0))
    END
$$;

-- Tiers, best first: 3 a complete trade bar, 2 a poll bar with at least full_coverage, 1 a
-- kline bar (the exchange's own minutes), 0 a thinner poll bar or a trade bar with a hole (so
-- `etl backfill` fills its hour from the exchange's candles).
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

-- A bar's rank: {tier, coverage, samples}. Arrays compare element by element, so the higher
-- tier wins, then the higher coverage, then more samples. An array puts NULL above every number,
-- so an unknown coverage or sample count ranks as 0. (One expression, no FROM: PostgreSQL inlines
-- it into the calling statement.)
CREATE OR REPLACE FUNCTION etl_bar_rank(
    source text, samples integer, interval_s double precision, default_interval_s double precision,
    full_coverage double precision, ids_missing integer DEFAULT NULL)
RETURNS double precision[]
LANGUAGE sql IMMUTABLE
AS $$
    SELECT ARRAY[
        etl_bar_tier(source,
                     etl_bar_coverage(source, samples, interval_s, default_interval_s, ids_missing),
                     full_coverage),
        coalesce(etl_bar_coverage(source, samples, interval_s, default_interval_s, ids_missing), 0),
        coalesce(samples, 0)]::double precision[]
$$;

-- Does the new bar replace the old one?
-- 1. A bar from the same producer (same source and staging file) always does: it is a re-read
--    of the same data (late ticks, --rerun, a backfill fetched again).
-- 2. Otherwise the higher rank wins (tier, then coverage, then samples).
-- 3. A tie keeps the bar already there: running anything twice changes nothing.
CREATE OR REPLACE FUNCTION etl_bar_replaces(
    new_source text, new_staging uuid, new_samples integer, new_interval double precision,
    old_source text, old_staging uuid, old_samples integer, old_interval double precision,
    default_interval_s double precision, full_coverage double precision,
    new_missing integer DEFAULT NULL, old_missing integer DEFAULT NULL)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE
        WHEN new_source = old_source AND new_staging IS NOT DISTINCT FROM old_staging THEN true
        ELSE etl_bar_rank(new_source, new_samples, new_interval, default_interval_s,
                          full_coverage, new_missing)
           > etl_bar_rank(old_source, old_samples, old_interval, default_interval_s,
                          full_coverage, old_missing)
    END
$$;
