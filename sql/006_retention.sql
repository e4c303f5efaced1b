-- Retention of hourly bars: drop a monthly partition of metrics_hourly once it lies wholly
-- beyond keep_days AND every (symbol, day) it holds is present in metrics_daily. metrics_daily is
-- kept for ever. A partition whose days are not all downsampled is kept and reported.
--
--   SELECT * FROM etl_hourly_retention(400, true);   -- dry run: what would go
--   SELECT * FROM etl_hourly_retention(400, false);  -- apply
CREATE OR REPLACE FUNCTION etl_hourly_retention(keep_days double precision, dry_run boolean DEFAULT true)
RETURNS TABLE (partition text, range_start timestamptz, range_end timestamptz, action text,
               missing_days bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    cutoff timestamptz := now() - make_interval(secs => keep_days * 86400);
    part   record;
    bounds text[];
BEGIN
    FOR part IN
        SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'metrics_hourly'::regclass
        ORDER BY 1
    LOOP
        bounds := regexp_match(part.bound, $re$FROM \('([^']+)'\) TO \('([^']+)'\)$re$);
        CONTINUE WHEN bounds IS NULL;  -- a DEFAULT partition has no range: never dropped here
        partition := part.name;
        range_start := bounds[1]::timestamptz;
        range_end := bounds[2]::timestamptz;
        CONTINUE WHEN range_end > cutoff;
        EXECUTE format(
            'SELECT count(*) FROM (SELECT DISTINCT symbol, (bucket AT TIME ZONE %L)::date AS day FROM %I) h '
            'WHERE NOT EXISTS (SELECT 1 FROM metrics_daily d WHERE d.symbol = h.symbol AND d.day = h.day)',
            'UTC', part.name)
        INTO missing_days;
        IF missing_days > 0 THEN
            action := 'kept';
        ELSIF dry_run THEN
            action := 'would drop';
        ELSE
            EXECUTE format('DROP TABLE %I', part.name);
            action := 'dropped';
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
