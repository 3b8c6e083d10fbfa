-- Back to classification without length limits (see 0015_column_limits.up.sql).
CREATE OR REPLACE FUNCTION orgbase.make_tenant_table(tbl regclass, app text, classes jsonb) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record;
BEGIN
    IF jsonb_typeof(classes) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'classes must be a JSON object {"column": "class"}';
    END IF;
    PERFORM orgbase.make_tenant_table(tbl, app);
    FOR c IN SELECT key, value #>> '{}' AS class FROM jsonb_each(classes) LOOP
        PERFORM orgbase.classify(tbl, c.key::name, c.class);
    END LOOP;
END
$$;
DROP FUNCTION orgbase.classify(regclass, name, text, int, int);
ALTER TABLE orgbase.column_classes
    DROP CONSTRAINT column_classes_length_range,
    DROP COLUMN max_length,
    DROP COLUMN min_length;
