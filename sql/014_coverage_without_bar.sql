-- An hour without a bar saw nothing: its coverage is 0.
--
-- Callers join the hours of a range to `metrics_hourly` with a LEFT JOIN, so an hour without a
-- bar reaches etl_bar_coverage as NULLs. In 011, `least(1.0, NULL)` is 1.0 (LEAST ignores
-- NULLs), which counted a missing hour as fully covered. Same signature, same result for every
-- real bar; NULL samples (or no interval at all) now give 0.
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
