-- A read checks the context once per statement instead of twice (docs/performance.md,
-- docs/security.md item 4).
--
-- The select policy was org_id = (checked org) AND ((checked level) >= 1 OR created_by =
-- (checked user)): two sub-selects, each a call of orgbase.ctx_check that verifies the MAC.
-- Two sub-selects cannot share one check (a set_config can run between them). One sub-select
-- with two outputs can be compared as a row, and PostgreSQL turns the comparison into
-- org_id = $1 AND x = $2, so org_id stays an index key:
--
--   (org_id, CASE WHEN <level hint> >= 1 THEN nil ELSE created_by END)
--     = (SELECT c.org_id, CASE WHEN c.level >= 1 THEN nil ELSE c.user_id END FROM ctx_check(app) c)
--
-- The checked level decides the right-hand side. The left-hand side needs a level too, and it
-- takes it from the context's settings unchecked (orgbase.ctx_level_hint, a plain expression).
-- A wrong hint can only hide rows. Say the hint claims a level and the check does not: then
-- nil = user, and no row passes. Say the hint denies a level the check grants: then
-- created_by = nil, and no row passes either. No user id is nil. The caller sees all rows of
-- the organization only when the check grants the level, and only its own rows when it does not.

-- The caller's level in an app from the context's settings, NOT verified: for the left-hand
-- side of the select policy only, where a forged answer hides rows and reveals none. Plain SQL,
-- inlined into the policy.
CREATE FUNCTION orgbase.ctx_level_hint(app text) RETURNS int
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('orgbase.org_role', true) IN ('owner', 'admin') THEN 3
                ELSE CASE pg_catalog.split_part(pg_catalog.split_part(
                              ',' OPERATOR(pg_catalog.||) pg_catalog.current_setting('orgbase.app_roles', true)
                              OPERATOR(pg_catalog.||) ',', ',' OPERATOR(pg_catalog.||) app OPERATOR(pg_catalog.||) '=', 2), ',', 1)
                         WHEN 'admin' THEN 3 WHEN 'editor' THEN 2 WHEN 'viewer' THEN 1 ELSE 0 END
           END
$$;
REVOKE ALL ON FUNCTION orgbase.ctx_level_hint(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.ctx_level_hint(text) TO orgbase_runtime, orgbase_readonly;

-- The role matrix of SPEC R3 (0009) with the select policy above.
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
    IF citus THEN
        EXECUTE format('CREATE POLICY tenant_select ON %s FOR SELECT USING (org_id = %s AND (%s >= 1 OR created_by = %s))',
                       tbl, o, l, u);
    ELSE
        -- One checked sub-select for organization and level (see the head of this migration).
        EXECUTE format('CREATE POLICY tenant_select ON %s FOR SELECT USING ('
                       '(org_id, CASE WHEN (SELECT orgbase.ctx_level_hint(%L)) >= 1 '
                       'THEN ''00000000-0000-0000-0000-000000000000''::uuid ELSE created_by END) = '
                       '(SELECT c.org_id, CASE WHEN c.level >= 1 '
                       'THEN ''00000000-0000-0000-0000-000000000000''::uuid ELSE c.user_id END '
                       'FROM orgbase.ctx_check(%L) c))',
                       tbl, app, app);
    END IF;
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
