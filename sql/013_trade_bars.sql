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
