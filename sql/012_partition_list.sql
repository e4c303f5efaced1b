-- The monthly partitions of metrics_hourly with their ranges, oldest first; a DEFAULT partition
-- (none is made by this project) comes last with NULL bounds.
--
--   SELECT * FROM etl_hourly_partitions();
CREATE OR REPLACE FUNCTION etl_hourly_partitions()
RETURNS TABLE (partition text, range_start timestamptz, range_end timestamptz)
LANGUAGE sql STABLE
AS $$
    SELECT c.relname::text,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), $re$FROM \('([^']+)'\)$re$))[1]::timestamptz,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), $re$TO \('([^']+)'\)$re$))[1]::timestamptz
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'metrics_hourly'::regclass
    ORDER BY 2 NULLS LAST
$$;
