-- Back to before the analytics migration: the previous bodies of the functions it replaced,
-- then its own objects.
CREATE OR REPLACE FUNCTION orgbase.valid_scopes(scopes text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT bool_and(s = 'admin' OR s ~ '^(\*|[a-z][a-z0-9_]{0,62}):(read|write|admin)$')
      FROM unnest(scopes) s
$$;

CREATE OR REPLACE FUNCTION orgbase.scopes_cover(have text[], want text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT COALESCE(pg_catalog.bool_and(
               CASE WHEN w = 'admin' THEN 'admin' = ANY (have)
                    ELSE orgbase.scope_level(have, pg_catalog.split_part(w, ':', 1))
                         >= orgbase.scope_level(ARRAY[w], pg_catalog.split_part(w, ':', 1)) END), true)
      FROM pg_catalog.unnest(want) w
$$;

CREATE OR REPLACE FUNCTION orgbase.make_tenant_table(tbl regclass, app text, classes jsonb) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record;
BEGIN
    IF jsonb_typeof(classes) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'classes must be a JSON object {"column": "class"} or {"column": {"class": …, "max_length": …}}';
    END IF;
    PERFORM orgbase.make_tenant_table(tbl, app);
    FOR c IN SELECT key, value FROM jsonb_each(classes) LOOP
        IF jsonb_typeof(c.value) = 'object' THEN
            IF EXISTS (SELECT 1 FROM jsonb_object_keys(c.value) k
                        WHERE k NOT IN ('class', 'min_length', 'max_length')) THEN
                RAISE EXCEPTION 'classes.%: the keys are class, min_length and max_length', c.key;
            END IF;
            PERFORM orgbase.classify(tbl, c.key::name, c.value ->> 'class',
                                     (c.value ->> 'min_length')::int, (c.value ->> 'max_length')::int);
        ELSE
            PERFORM orgbase.classify(tbl, c.key::name, c.value #>> '{}');
        END IF;
    END LOOP;
END
$$;

DROP FUNCTION orgbase.privacy_charges_page(uuid, int);
DROP FUNCTION orgbase.privacy_budget();
DROP FUNCTION orgbase.privacy_charge(bigint, jsonb);
DROP FUNCTION orgbase.privacy_charge_for(uuid, uuid, uuid, bigint, jsonb);
DROP FUNCTION orgbase.privacy_caller();
DROP FUNCTION orgbase.privacy_budget_of(uuid);
DROP FUNCTION orgbase.privacy_period_start(text, timestamptz);
DROP TABLE orgbase.privacy_charges;
DROP TABLE orgbase.privacy_spend;
DROP TABLE orgbase.privacy_budgets;
DROP TABLE orgbase.privacy_settings;
DROP TABLE orgbase.analytics_refreshes;
DROP FUNCTION orgbase.analytics_rule(regclass, name, text);
ALTER TABLE orgbase.column_classes
    DROP CONSTRAINT column_classes_analytics_sensitive,
    DROP COLUMN analytics;
ALTER DEFAULT PRIVILEGES FOR ROLE orgbase_owner IN SCHEMA analytics
    REVOKE SELECT ON TABLES FROM orgbase_readonly, orgbase_backup;
DROP SCHEMA analytics CASCADE;
