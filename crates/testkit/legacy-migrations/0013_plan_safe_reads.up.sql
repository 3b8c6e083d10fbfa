-- Reads are checked by two sub-selects again, as before migration 0012 (docs/performance.md,
-- docs/security.md item 4).
--
-- Migration 0012 compared (org_id, CASE WHEN <level hint> >= 1 THEN nil ELSE created_by END)
-- with one checked sub-select. PostgreSQL splits that into org_id = $1 AND <case> = $2 and,
-- having no statistics for the CASE expression, estimates the second condition to keep 1 row in
-- 200. Once an organization holds enough rows that this estimate falls below a page of results,
-- the planner gives up the newest-first index for a bitmap scan of the whole organization plus a
-- sort: on the benchmark data, after the write benchmark had added 500 notes per organization,
-- the list of the newest 20 notes went from 0.1 ms to 4 ms and R1 from 4,400 to 370 requests
-- per second. PostgreSQL has no way for a policy to state the selectivity of such a condition
-- without a C function, and the single check saved about 3 µs per read.
--
-- The policy of migration 0009, org_id = (checked org) AND ((checked level) >= 1 OR created_by
-- = (checked user)), is estimated at a third of the organization's rows (an inequality on a
-- parameter), so the index stays the plan at any size; the caller's id is still never computed
-- when the level suffices. tests/tenancy.rs holds the planner to that
-- (list_reads_keep_the_newest_first_index_on_large_organizations).
CREATE OR REPLACE FUNCTION orgbase.tenant_policies(tbl regclass, app text, citus boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    o text := CASE WHEN citus THEN 'orgbase.ctx_org()' ELSE '(SELECT orgbase.ctx_org())' END;
    u text := CASE WHEN citus THEN 'orgbase.ctx_user()' ELSE '(SELECT orgbase.ctx_user())' END;
    l text := CASE WHEN citus THEN format('orgbase.ctx_app_level(%L)', app)
                   ELSE format('(SELECT orgbase.ctx_app_level(%L))', app) END;
    p text;
BEGIN
    FOREACH p IN ARRAY ARRAY['tenant_select', 'tenant_insert', 'tenant_update', 'tenant_delete'] LOOP
        EXECUTE format('DROP POLICY IF EXISTS %I ON %s', p, tbl);
    END LOOP;
    -- The app level comes first: when it suffices, the caller's id is never computed.
    EXECUTE format('CREATE POLICY tenant_select ON %s FOR SELECT USING (org_id = %s AND (%s >= 1 OR created_by = %s))',
                   tbl, o, l, u);
    IF citus THEN
        EXECUTE format('CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK (org_id = %s AND %s >= 2 AND created_by = %s AND updated_by = %s)',
                       tbl, o, l, u, u);
    ELSE
        EXECUTE format('CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK ('
                       '(org_id, created_by, updated_by, true) = '
                       '(SELECT c.org_id, c.user_id, c.user_id, c.level >= 2 FROM orgbase.ctx_check(%L) c))',
                       tbl, app);
    END IF;
    EXECUTE format('CREATE POLICY tenant_update ON %s FOR UPDATE USING (org_id = %s AND (%s >= 2 OR created_by = %s)) '
                   'WITH CHECK (org_id = %s AND (deleted_at IS NULL OR %s >= 3 OR created_by = %s))',
                   tbl, o, l, u, o, l, u);
    EXECUTE format('CREATE POLICY tenant_delete ON %s FOR DELETE USING (org_id = %s AND (%s >= 3 OR created_by = %s))',
                   tbl, o, l, u);
END
$$;
REVOKE ALL ON FUNCTION orgbase.tenant_policies(regclass, text, boolean) FROM PUBLIC;

-- Re-create the policies of the registered tenant tables. Citus ones keep their form: their
-- select policy has no sub-select at all.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tt.table_name, tt.app,
               NOT EXISTS (SELECT 1 FROM pg_policy p
                            WHERE p.polrelid = tt.table_name AND p.polname = 'tenant_select'
                              AND pg_get_expr(p.polqual, p.polrelid) LIKE '%SELECT %') AS citus
          FROM orgbase.tenant_tables tt
    LOOP
        PERFORM orgbase.tenant_policies(t.table_name, t.app, t.citus);
    END LOOP;
END
$$;

DROP FUNCTION orgbase.ctx_level_hint(text);
