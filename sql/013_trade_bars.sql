-- Bars built from every aggregate trade (source 'trade', `etl collect --source trades`).
--
-- A trade bar is the exchange's own candle: open / high / low / close of its trades, volume
-- (base asset), quote_volume (sum of price * quantity), trades (individual trades, l - f + 1
-- summed, as the exchange's kline counts them) and vwap (quote_volume / volume). mean keeps its
-- meaning: the mean of the tick prices (here, of every aggregate trade's price). samples is the
-- number of aggregate trades, ids_missing the aggregate trade ids of the hour that could not be
-- fetched (0: the id sequence of the hour has no hole). All five are NULL for poll and kline
-- bars.
ALTER TABLE metrics_hourly ADD COLUMN IF NOT EXISTS volume double precision;
ALTER TABLE metrics_hourly ADD COLUMN IF NOT EXISTS quote_volume double precision;
ALTER TABLE metrics_hourly ADD COLUMN IF NOT EXISTS trades bigint;
ALTER TABLE metrics_hourly ADD COLUMN IF NOT EXISTS vwap double precision;
ALTER TABLE metrics_hourly ADD COLUMN IF NOT EXISTS ids_missing integer;

-- Coverage now also knows trade bars: samples / (samples + ids_missing), so exactly 1 when the
-- hour's id sequence has no hole and less for each missing id. Poll and kline bars keep the rule
-- of sql/011_bar_rule.sql. The new argument has a default, so every call written for the old
-- four arguments still works; the old function is dropped first so the name stays unambiguous
-- (its callers are SQL functions, resolved at call time).
DROP FUNCTION IF EXISTS etl_bar_coverage(text, integer, double precision, double precision);
CREATE OR REPLACE FUNCTION etl_bar_coverage(
    source text, samples integer, interval_s double precision, default_interval_s double precision,
    ids_missing integer DEFAULT NULL)
RETURNS double precision
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE
        WHEN source = 'trade' THEN
            samples::double precision / greatest(1, samples + greatest(0, coalesce(ids_missing, 0)))
        ELSE least(1.0, samples * coalesce(interval_s,
            CASE WHEN source = 'kline' THEN 60.0 ELSE default_interval_s END) / 3600.0)
    END
$$;

-- The rule of sql/011_bar_rule.sql, with each bar's missing ids passed on to its coverage: a
-- complete trade bar (coverage 1, tier 3) wins over any poll or kline bar of its hour; a trade
-- bar with a hole is tier 0 and loses to a kline bar (so `etl backfill` fills its hour) and to a
-- complete poll bar.
DROP FUNCTION IF EXISTS etl_bar_replaces(
    text, uuid, integer, double precision, text, uuid, integer, double precision,
    double precision, double precision);
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
        ELSE (etl_bar_tier(new_source,
                           etl_bar_coverage(new_source, new_samples, new_interval,
                                            default_interval_s, new_missing),
                           full_coverage),
              etl_bar_coverage(new_source, new_samples, new_interval, default_interval_s,
                               new_missing),
              new_samples)
           > (etl_bar_tier(old_source,
                           etl_bar_coverage(old_source, old_samples, old_interval,
                                            default_interval_s, old_missing),
                           full_coverage),
              etl_bar_coverage(old_source, old_samples, old_interval, default_interval_s,
                               old_missing),
              old_samples)
    END
$$;
