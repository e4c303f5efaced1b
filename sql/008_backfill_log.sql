-- Which hours a backfill has fetched from the exchange's klines, and how many minutes came back.
--
-- A backfill never asks for an hour twice (a second run fetches nothing), even when the exchange
-- had no candle for it (minutes = 0, e.g. before a listing). Delete rows to fetch hours again.
CREATE TABLE IF NOT EXISTS backfill_log (
    symbol      text        NOT NULL,
    hour        timestamptz NOT NULL,
    minutes     integer     NOT NULL,
    written     boolean     NOT NULL,
    fetched_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, hour)
);
COMMENT ON COLUMN backfill_log.written IS
    'false when a poll bar with full coverage already held the hour and was kept';
