-- Daily bars per symbol (UTC days), downsampled from metrics_hourly and kept for years.
--
-- open is the day's first hourly open, close its last hourly close, high / low the extremes,
-- mean the hourly means weighted by their samples, hours the number of hourly bars.
CREATE TABLE IF NOT EXISTS metrics_daily (
    symbol      text             NOT NULL,
    day         date             NOT NULL,
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    mean        double precision NOT NULL,
    samples     bigint           NOT NULL,
    hours       integer          NOT NULL,
    updated_at  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, day)
);

-- Recompute the closed UTC days in [lo, hi) from the hourly bars; returns the rows written.
-- A day still in progress is left alone; rerunning with the same bars changes nothing. The
-- weighted mean sums the hours in bucket order: a float sum in whatever order rows arrive would
-- differ in its last bits from run to run.
CREATE OR REPLACE FUNCTION etl_refresh_daily(lo date, hi date)
RETURNS integer
LANGUAGE sql
AS $$
    WITH days AS (
        SELECT symbol,
               (bucket AT TIME ZONE 'UTC')::date                            AS day,
               (array_agg(open ORDER BY bucket))[1]                         AS open,
               max(high)                                                    AS high,
               min(low)                                                     AS low,
               (array_agg(close ORDER BY bucket DESC))[1]                   AS close,
               sum(mean * samples ORDER BY bucket) / nullif(sum(samples), 0) AS mean,
               sum(samples)                                                 AS samples,
               count(*)::integer                                            AS hours
        FROM metrics_hourly
        WHERE bucket >= lo::timestamp AT TIME ZONE 'UTC'
          AND bucket <  least(hi::timestamp, date_trunc('day', now() AT TIME ZONE 'UTC'))
                        AT TIME ZONE 'UTC'
        GROUP BY 1, 2
    ), written AS (
        INSERT INTO metrics_daily AS d (symbol, day, open, high, low, close, mean, samples, hours)
        SELECT symbol, day, open, high, low, close, coalesce(mean, open), samples, hours FROM days
        ON CONFLICT (symbol, day) DO UPDATE
            SET open = excluded.open, high = excluded.high, low = excluded.low,
                close = excluded.close, mean = excluded.mean, samples = excluded.samples,
                hours = excluded.hours, updated_at = now()
            WHERE (d.open, d.high, d.low, d.close, d.mean, d.samples, d.hours)
                  IS DISTINCT FROM
                  (excluded.open, excluded.high, excluded.low, excluded.close, excluded.mean,
                   excluded.samples, excluded.hours)
        RETURNING 1
    )
    SELECT count(*)::integer FROM written
$$;
