-- Hourly bars per symbol, one partition per UTC month.
--
-- close is the last price seen in the hour and last_at when; mean is the arithmetic mean of the
-- samples; samples against the expected count (3600 / poll interval) is the bar's coverage.
-- source is 'poll' for bars rolled up from staged ticks, 'kline' for bars backfilled from the
-- exchange's candles. The key leads with symbol so the table can be distributed by symbol (Citus).
CREATE TABLE IF NOT EXISTS metrics_hourly (
    symbol      text             NOT NULL,
    bucket      timestamptz      NOT NULL,
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    mean        double precision NOT NULL,
    samples     integer          NOT NULL,
    first_at    timestamptz      NOT NULL,
    last_at     timestamptz      NOT NULL,
    max_gap_s   double precision,
    source      text             NOT NULL DEFAULT 'poll',
    updated_at  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, bucket)
) PARTITION BY RANGE (bucket);

COMMENT ON TABLE metrics_hourly IS
    'Hourly OHLC / mean bars per symbol; monthly range partitions named metrics_hourly_YYYYMM.';
COMMENT ON COLUMN metrics_hourly.max_gap_s IS
    'Longest stretch of the hour without a sample, counting from the hour start and to its end.';
