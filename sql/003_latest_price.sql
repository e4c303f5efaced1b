-- The newest committed price per symbol: the close of its newest hourly bar.
--
-- A loose index scan over the primary key (symbol, bucket): one probe per symbol instead of
-- reading every bar, so it stays fast with years of history.
CREATE OR REPLACE VIEW latest_price AS
WITH RECURSIVE symbols AS (
    (SELECT symbol FROM metrics_hourly ORDER BY symbol LIMIT 1)
    UNION ALL
    SELECT (SELECT m.symbol FROM metrics_hourly m WHERE m.symbol > s.symbol ORDER BY m.symbol LIMIT 1)
    FROM symbols s
    WHERE s.symbol IS NOT NULL
)
SELECT s.symbol, newest.close AS price, newest.last_at AS at
FROM symbols s
CROSS JOIN LATERAL (
    SELECT close, last_at
    FROM metrics_hourly m
    WHERE m.symbol = s.symbol
    ORDER BY m.bucket DESC
    LIMIT 1
) newest
WHERE s.symbol IS NOT NULL;
