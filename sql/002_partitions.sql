-- Monthly partitions of metrics_hourly, created ahead of need and on demand.
--
-- etl_ensure_hourly_partitions(lo, hi) creates the partition of every UTC month from lo's month
-- to hi's month that does not exist yet and returns how many it created. Months are computed in
-- UTC whatever the session time zone. An existing partition costs one catalog lookup and no lock.
CREATE OR REPLACE FUNCTION etl_ensure_hourly_partitions(lo timestamptz, hi timestamptz)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    month   timestamp := date_trunc('month', lo AT TIME ZONE 'UTC');
    last    timestamp := date_trunc('month', hi AT TIME ZONE 'UTC');
    name    text;
    created integer := 0;
BEGIN
    WHILE month <= last LOOP
        name := 'metrics_hourly_' || to_char(month, 'YYYYMM');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF metrics_hourly FOR VALUES FROM (%L) TO (%L)',
                name,
                to_char(month, 'YYYY-MM-DD') || ' 00:00:00+00',
                to_char(month + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00'
            );
            created := created + 1;
        END IF;
        month := month + interval '1 month';
    END LOOP;
    RETURN created;
END
$$;

-- The current month and the next two always exist.
SELECT etl_ensure_hourly_partitions(now(), now() + interval '2 months');
