-- The coverage of every hour of a closed UTC day, one row per (symbol, day), written after the
-- day's bars: what the notebooks' coverage grid reads instead of the bars.
--
-- The grid of 14 days x 1,000 symbols is 336,000 (symbol, hour) cells. Read from the hourly bars
-- it took about 250 ms end to end (bench part 6): 135 ms on the server, the rest encoding,
-- decoding and placing 336,000 rows. From this table it is 14,000 short rows (about 40 ms end
-- to end); only the day still open (and any day not summarized) is read from the bars.
--
--   coverage   24 numbers, hour 0 to 23 (UTC): etl_bar_coverage of the hour's bar, 0 where the
--              hour has no bar. NULL where the bar's coverage depends on the configured poll
--              interval (a poll bar written before bars recorded theirs) or its source is not
--              one etl writes: readers take such a day from the bars, as before.
--   sources    24 letters, one per hour: p poll, k kline, t trade, . no bar.
--
-- etl_refresh_coverage(lo, hi) (below) writes the rows of the closed days of [lo, hi) from their
-- bars. The rollup, the backfill and a rebuild call it once a run for the closed days they wrote
-- and lack rows, the rollup also for its staged ones (so the next run makes up for a run that
-- failed after writing); once a run, not once a write: a backlog of one closed day is written
-- in many chunks. Any
-- write to a closed day's bars deletes that day's rows first (triggers, below): a day keeps a
-- row for every symbol with bars, and that row matches them, or it has no rows and is read from
-- the bars until the next refresh (a crash between a write and its run's refresh leaves that).
-- Retention (etl_hourly_retention, below) deletes the rows of the days it drops, so the grid
-- there stays empty as before.
--
--   SELECT symbol, day, sources FROM coverage_daily WHERE day = current_date - 1;
--   SELECT etl_refresh_coverage('2026-01-01', '2026-02-01');   -- (re)summarize a month
CREATE TABLE IF NOT EXISTS coverage_daily (
    symbol    text               NOT NULL,
    day       date               NOT NULL,
    coverage  double precision[] NOT NULL CHECK (cardinality(coverage) = 24),
    sources   text               NOT NULL CHECK (length(sources) = 24),
    PRIMARY KEY (day, symbol)  -- the grid reads days of many symbols: one range of the index
);

-- One day's hours in slots 0 to 23, from the hours a day has bars for (hs, in any order) and
-- their values (vs) or letters (ls): 0 (or '.') for an hour without a bar. Written out hour by
-- hour: one expression, which PostgreSQL inlines; half the time of a subquery per day.
CREATE OR REPLACE FUNCTION etl_day_slots(hs integer[], vs double precision[])
RETURNS double precision[]
LANGUAGE sql IMMUTABLE
AS $$
    SELECT ARRAY[
        CASE WHEN array_position(hs, 0) IS NULL THEN 0.0 ELSE vs[array_position(hs, 0)] END,
        CASE WHEN array_position(hs, 1) IS NULL THEN 0.0 ELSE vs[array_position(hs, 1)] END,
        CASE WHEN array_position(hs, 2) IS NULL THEN 0.0 ELSE vs[array_position(hs, 2)] END,
        CASE WHEN array_position(hs, 3) IS NULL THEN 0.0 ELSE vs[array_position(hs, 3)] END,
        CASE WHEN array_position(hs, 4) IS NULL THEN 0.0 ELSE vs[array_position(hs, 4)] END,
        CASE WHEN array_position(hs, 5) IS NULL THEN 0.0 ELSE vs[array_position(hs, 5)] END,
        CASE WHEN array_position(hs, 6) IS NULL THEN 0.0 ELSE vs[array_position(hs, 6)] END,
        CASE WHEN array_position(hs, 7) IS NULL THEN 0.0 ELSE vs[array_position(hs, 7)] END,
        CASE WHEN array_position(hs, 8) IS NULL THEN 0.0 ELSE vs[array_position(hs, 8)] END,
        CASE WHEN array_position(hs, 9) IS NULL THEN 0.0 ELSE vs[array_position(hs, 9)] END,
        CASE WHEN array_position(hs, 10) IS NULL THEN 0.0 ELSE vs[array_position(hs, 10)] END,
        CASE WHEN array_position(hs, 11) IS NULL THEN 0.0 ELSE vs[array_position(hs, 11)] END,
        CASE WHEN array_position(hs, 12) IS NULL THEN 0.0 ELSE vs[array_position(hs, 12)] END,
        CASE WHEN array_position(hs, 13) IS NULL THEN 0.0 ELSE vs[array_position(hs, 13)] END,
        CASE WHEN array_position(hs, 14) IS NULL THEN 0.0 ELSE vs[array_position(hs, 14)] END,
        CASE WHEN array_position(hs, 15) IS NULL THEN 0.0 ELSE vs[array_position(hs, 15)] END,
        CASE WHEN array_position(hs, 16) IS NULL THEN 0.0 ELSE vs[array_position(hs, 16)] END,
        CASE WHEN array_position(hs, 17) IS NULL THEN 0.0 ELSE vs[array_position(hs, 17)] END,
        CASE WHEN array_position(hs, 18) IS NULL THEN 0.0 ELSE vs[array_position(hs, 18)] END,
        CASE WHEN array_position(hs, 19) IS NULL THEN 0.0 ELSE vs[array_position(hs, 19)] END,
        CASE WHEN array_position(hs, 20) IS NULL THEN 0.0 ELSE vs[array_position(hs, 20)] END,
        CASE WHEN array_position(hs, 21) IS NULL THEN 0.0 ELSE vs[array_position(hs, 21)] END,
        CASE WHEN array_position(hs, 22) IS NULL THEN 0.0 ELSE vs[array_position(hs, 22)] END,
        CASE WHEN array_position(hs, 23) IS NULL THEN 0.0 ELSE vs[array_position(hs, 23)] END
    ]
$$;

CREATE OR REPLACE FUNCTION etl_day_letters(hs integer[], ls text[])
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT coalesce(ls[array_position(hs, 0)], '.')
        || coalesce(ls[array_position(hs, 1)], '.')
        || coalesce(ls[array_position(hs, 2)], '.')
        || coalesce(ls[array_position(hs, 3)], '.')
        || coalesce(ls[array_position(hs, 4)], '.')
        || coalesce(ls[array_position(hs, 5)], '.')
        || coalesce(ls[array_position(hs, 6)], '.')
        || coalesce(ls[array_position(hs, 7)], '.')
        || coalesce(ls[array_position(hs, 8)], '.')
        || coalesce(ls[array_position(hs, 9)], '.')
        || coalesce(ls[array_position(hs, 10)], '.')
        || coalesce(ls[array_position(hs, 11)], '.')
        || coalesce(ls[array_position(hs, 12)], '.')
        || coalesce(ls[array_position(hs, 13)], '.')
        || coalesce(ls[array_position(hs, 14)], '.')
        || coalesce(ls[array_position(hs, 15)], '.')
        || coalesce(ls[array_position(hs, 16)], '.')
        || coalesce(ls[array_position(hs, 17)], '.')
        || coalesce(ls[array_position(hs, 18)], '.')
        || coalesce(ls[array_position(hs, 19)], '.')
        || coalesce(ls[array_position(hs, 20)], '.')
        || coalesce(ls[array_position(hs, 21)], '.')
        || coalesce(ls[array_position(hs, 22)], '.')
        || coalesce(ls[array_position(hs, 23)], '.')
$$;

-- The coverage of [lo, hi) as day rows: one per (symbol, day) with a bar in it, the coverage of
-- its 24 hours (0 where no bar, NULL where it needs the configured interval, as above) and their
-- sources' letters: what etl_refresh_coverage writes to coverage_daily.
--
--   SELECT * FROM etl_coverage_days(now() - interval '6 hours', now()) WHERE symbol = 'BTCUSDT';
CREATE OR REPLACE FUNCTION etl_coverage_days(lo timestamptz, hi timestamptz)
RETURNS TABLE (symbol text, day date, coverage double precision[], sources text)
LANGUAGE sql STABLE
AS $$
    SELECT m.symbol,
           (m.bucket AT TIME ZONE 'UTC')::date,
           etl_day_slots(
               array_agg(extract(hour FROM m.bucket AT TIME ZONE 'UTC')::integer),
               array_agg(CASE WHEN m.source NOT IN ('poll', 'kline', 'trade')
                                   OR (m.source = 'poll' AND m.interval_s IS NULL) THEN NULL
                              ELSE etl_bar_coverage(m.source, m.samples, m.interval_s, NULL,
                                                    m.ids_missing) END)),
           etl_day_letters(
               array_agg(extract(hour FROM m.bucket AT TIME ZONE 'UTC')::integer),
               array_agg(CASE m.source WHEN 'poll' THEN 'p' WHEN 'kline' THEN 'k'
                                       WHEN 'trade' THEN 't' ELSE '?' END))
    FROM metrics_hourly m
    WHERE m.bucket >= lo AND m.bucket < hi
    GROUP BY 1, 2
$$;

-- Write the coverage rows of the closed UTC days in [lo, hi) from their bars; returns the rows
-- written. A day still open is left alone; rerunning with the same bars changes nothing.
CREATE OR REPLACE FUNCTION etl_refresh_coverage(lo date, hi date)
RETURNS integer
LANGUAGE sql
AS $$
    WITH written AS (
        INSERT INTO coverage_daily AS c (symbol, day, coverage, sources)
        SELECT k.symbol, k.day, k.coverage, k.sources
        FROM etl_coverage_days(
            lo::timestamp AT TIME ZONE 'UTC',
            least(hi::timestamp, date_trunc('day', now() AT TIME ZONE 'UTC')) AT TIME ZONE 'UTC'
        ) AS k
        ON CONFLICT (day, symbol) DO UPDATE
            SET coverage = excluded.coverage, sources = excluded.sources
            WHERE (c.coverage, c.sources) IS DISTINCT FROM (excluded.coverage, excluded.sources)
        RETURNING 1
    )
    SELECT count(*)::integer FROM written
$$;

-- Any write through metrics_hourly to the bars of a closed day (etl's, a DBA's INSERT, UPDATE or
-- DELETE, a restore's COPY) deletes the coverage rows of that day, for every symbol, so readers
-- take the day from its bars until etl_refresh_coverage summarizes it again. One set-based DELETE
-- per statement, none for the open day's bars (every hourly rollup's). Not seen: a statement that
-- names a partition (metrics_hourly_YYYYMM) rather than metrics_hourly, and TRUNCATE. After one
-- of those, delete the days' rows (DELETE FROM coverage_daily WHERE day ...), then refresh them.
CREATE OR REPLACE FUNCTION etl_forget_coverage()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    -- the statement's own time: a transaction begun before midnight may write after it
    today timestamptz := date_trunc('day', clock_timestamp() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
BEGIN
    DELETE FROM coverage_daily
    WHERE day IN (SELECT (t.bucket AT TIME ZONE 'UTC')::date FROM touched t WHERE t.bucket < today);
    IF TG_OP = 'UPDATE' THEN  -- a bar moved to another hour leaves both days
        DELETE FROM coverage_daily
        WHERE day IN (SELECT (t.bucket AT TIME ZONE 'UTC')::date FROM moved t WHERE t.bucket < today);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS etl_forget_coverage_inserted ON metrics_hourly;
CREATE TRIGGER etl_forget_coverage_inserted
    AFTER INSERT ON metrics_hourly REFERENCING NEW TABLE AS touched
    FOR EACH STATEMENT EXECUTE FUNCTION etl_forget_coverage();
DROP TRIGGER IF EXISTS etl_forget_coverage_updated ON metrics_hourly;
CREATE TRIGGER etl_forget_coverage_updated
    AFTER UPDATE ON metrics_hourly REFERENCING OLD TABLE AS touched NEW TABLE AS moved
    FOR EACH STATEMENT EXECUTE FUNCTION etl_forget_coverage();
DROP TRIGGER IF EXISTS etl_forget_coverage_deleted ON metrics_hourly;
CREATE TRIGGER etl_forget_coverage_deleted
    AFTER DELETE ON metrics_hourly REFERENCING OLD TABLE AS touched
    FOR EACH STATEMENT EXECUTE FUNCTION etl_forget_coverage();

-- 006's retention, which now deletes the coverage rows of the days of each partition it drops.
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
            DELETE FROM coverage_daily c
            WHERE c.day >= (range_start AT TIME ZONE 'UTC')::date
              AND c.day < (range_end AT TIME ZONE 'UTC')::date;
            action := 'dropped';
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- The closed days of the last 31 (what a notebook's grid looks at), summarized now; older days
-- are read from the bars until `SELECT etl_refresh_coverage(lo, hi)` summarizes them.
SELECT etl_refresh_coverage((now() AT TIME ZONE 'UTC')::date - 31, (now() AT TIME ZONE 'UTC')::date);
