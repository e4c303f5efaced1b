-- Poll bars compared with the exchange's own 1h candles (etl reconcile).
--
-- Deviations are in basis points of the exchange's value: (poll - kline) / kline * 10000.
-- A poll bar samples the price every few seconds, so its high and low sit inside the candle's
-- (high_bps <= 0 <= low_bps) and its close is the last sample before the hour ends.
CREATE TABLE IF NOT EXISTS reconciliation (
    symbol        text             NOT NULL,
    bucket        timestamptz      NOT NULL,
    open_bps      double precision NOT NULL,
    high_bps      double precision NOT NULL,
    low_bps       double precision NOT NULL,
    close_bps     double precision NOT NULL,
    poll_samples  integer          NOT NULL,
    checked_at    timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, bucket)
);
