-- Every symbol that has had an hourly bar, kept as it arrives, so that latest_price reads one
-- short list instead of finding the symbols in the bars.
--
-- 003's latest_price found the symbols with a loose index scan of metrics_hourly's primary key.
-- On a partitioned table every step of that scan probes every partition: with a year of bars
-- (15 partitions) the latest price of 1,000 symbols took 15,000 index probes and 110 ms on the
-- server (5 ms now; bench part 6), and each month kept adds a probe per symbol (ten years: 123).
-- Now the symbols come from etl_symbols, and each symbol's newest bar is one backward probe
-- from the newest partition, as before.
--
-- etl_symbols is filled by a statement trigger on metrics_hourly: every INSERT, COPY or
-- INSERT ... ON CONFLICT through the table (the rollup's, the backfill's, a restore's) adds the
-- symbols it brought that are not listed yet; one anti-join of the statement's new rows, no cost
-- per row. (A statement naming one partition directly does not fire it.) A symbol stays listed
-- once retention has dropped all its bars; latest_price then has no row for it, as before.
--
--   SELECT * FROM latest_price;                 -- newest close per symbol, as before
--   SELECT count(*) FROM etl_symbols;           -- every symbol ever written
CREATE TABLE IF NOT EXISTS etl_symbols (
    symbol  text PRIMARY KEY
);

CREATE OR REPLACE FUNCTION etl_note_symbols()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO etl_symbols (symbol)
    SELECT DISTINCT a.symbol FROM added a
    WHERE NOT EXISTS (SELECT 1 FROM etl_symbols s WHERE s.symbol = a.symbol)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS etl_note_symbols ON metrics_hourly;
CREATE TRIGGER etl_note_symbols
    AFTER INSERT ON metrics_hourly
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT
    EXECUTE FUNCTION etl_note_symbols();

-- The symbols already in the bars, found once the old way.
INSERT INTO etl_symbols (symbol)
WITH RECURSIVE symbols AS (
    (SELECT symbol FROM metrics_hourly ORDER BY symbol LIMIT 1)
    UNION ALL
    SELECT (SELECT m.symbol FROM metrics_hourly m WHERE m.symbol > s.symbol ORDER BY m.symbol LIMIT 1)
    FROM symbols s
    WHERE s.symbol IS NOT NULL
)
SELECT symbol FROM symbols WHERE symbol IS NOT NULL
ON CONFLICT DO NOTHING;

-- The newest committed price per symbol: the close of its newest hourly bar (003's columns).
CREATE OR REPLACE VIEW latest_price AS
SELECT s.symbol, newest.close AS price, newest.last_at AS at
FROM etl_symbols s
CROSS JOIN LATERAL (
    SELECT close, last_at
    FROM metrics_hourly m
    WHERE m.symbol = s.symbol
    ORDER BY m.bucket DESC
    LIMIT 1
) newest;
