-- EXPLAIN as a set of rows, for clients that read results through COPY (ADBC does, and
-- "COPY (EXPLAIN ...)" is not valid SQL). Used by the notebooks to show partition pruning.
--
--   SELECT * FROM etl_explain('SELECT count(*) FROM metrics_hourly WHERE bucket >= now() - interval ''1 day''');
CREATE OR REPLACE FUNCTION etl_explain(query text)
RETURNS SETOF text
LANGUAGE plpgsql
AS $$
DECLARE
    line text;
BEGIN
    FOR line IN EXECUTE 'EXPLAIN ' || query LOOP
        RETURN NEXT line;
    END LOOP;
END
$$;
