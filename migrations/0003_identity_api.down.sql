-- Back to migration 0002's identity schema.
DROP FUNCTION orgbase.totp_confirm(bytea, bigint, bytea);
DROP FUNCTION orgbase.totp_secret(bytea, bigint, bytea);
DROP FUNCTION orgbase.totp_enroll(bytea, bytea);
DROP FUNCTION orgbase.accept_invitation(bytea, bytea);
DROP FUNCTION orgbase.member_directory();
DROP FUNCTION orgbase.user_id_by_email(text);
DROP FUNCTION orgbase.create_org(bytea, uuid, text, text, text, text[], jsonb);
DROP FUNCTION orgbase.org_json(uuid);
DROP FUNCTION orgbase.me(bytea);
DROP FUNCTION orgbase.logout(bytea);
DROP FUNCTION orgbase.refresh_session(bytea, uuid, bytea, bytea, inet, text);
DROP FUNCTION orgbase.create_session(uuid, uuid, bytea, bytea, inet, text, boolean, interval, interval, bigint, bytea);
DROP FUNCTION orgbase.login_lookup(text, bigint, bytea);
DROP FUNCTION orgbase.signup(uuid, text, text, text);
DROP FUNCTION orgbase.session_of(bytea);
DROP FUNCTION orgbase.begin_request(bytea, text, inet);
DROP FUNCTION orgbase.org_of_ref(text);
DROP FUNCTION orgbase.member_app_roles(uuid, uuid);

DROP TABLE orgbase.member_roles;
DROP TABLE orgbase.roles;
DROP FUNCTION orgbase.valid_permissions(text[]);
DROP TABLE orgbase.api_keys;
DROP FUNCTION orgbase.valid_scopes(text[]);
DROP TABLE orgbase.team_members;
DROP TABLE orgbase.teams;
DROP TABLE orgbase.invitations;

DROP TRIGGER members_keep_owner ON orgbase.members;
DROP FUNCTION orgbase.members_keep_owner();
DROP POLICY org_read ON orgbase.organizations;
DROP POLICY org_update ON orgbase.organizations;
ALTER TABLE orgbase.organizations DISABLE ROW LEVEL SECURITY;
DROP POLICY member_read ON orgbase.members;
DROP POLICY member_insert ON orgbase.members;
DROP POLICY member_update ON orgbase.members;
ALTER TABLE orgbase.members DISABLE ROW LEVEL SECURITY;
DROP POLICY app_permission_read ON orgbase.app_permissions;
DROP POLICY app_permission_write ON orgbase.app_permissions;
ALTER TABLE orgbase.app_permissions DISABLE ROW LEVEL SECURITY;
REVOKE ALL ON orgbase.organizations, orgbase.members, orgbase.app_permissions, orgbase.tenant_tables
    FROM orgbase_runtime;
ALTER TABLE orgbase.app_permissions ALTER COLUMN granted_by DROP DEFAULT;
DROP FUNCTION orgbase.ctx_user_if_any();
DROP FUNCTION orgbase.ctx_is_admin();

ALTER TABLE orgbase.notes
    ALTER COLUMN org_id DROP DEFAULT,
    ALTER COLUMN created_by DROP DEFAULT,
    ALTER COLUMN updated_by DROP DEFAULT;
DROP POLICY tenant_select ON orgbase.notes;
DROP POLICY tenant_insert ON orgbase.notes;
DROP POLICY tenant_update ON orgbase.notes;
DROP POLICY tenant_delete ON orgbase.notes;
CREATE POLICY tenant_select ON orgbase.notes FOR SELECT USING (orgbase.ctx_allows(org_id, created_by, 'notes', 'read'));
CREATE POLICY tenant_insert ON orgbase.notes FOR INSERT WITH CHECK (orgbase.ctx_allows(org_id, created_by, 'notes', 'insert') AND created_by = orgbase.ctx_user() AND updated_by = orgbase.ctx_user());
CREATE POLICY tenant_update ON orgbase.notes FOR UPDATE USING (orgbase.ctx_allows(org_id, created_by, 'notes', 'update')) WITH CHECK (org_id = orgbase.ctx_org());
CREATE POLICY tenant_delete ON orgbase.notes FOR DELETE USING (orgbase.ctx_allows(org_id, created_by, 'notes', 'delete'));

DROP FUNCTION orgbase.make_tenant_table(regclass, text, boolean);
DROP FUNCTION orgbase.tenant_policies(regclass, text, boolean);
DROP FUNCTION orgbase.ctx_app_level(text);
DROP FUNCTION orgbase.ctx_org_role();
DROP FUNCTION orgbase.require_proof(text, text, bigint, bytea);

CREATE OR REPLACE FUNCTION orgbase.ctx_mac(org text, usr text, org_role text, app_roles text)
RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
    SELECT encode(sha256(k.outer_key || sha256(k.inner_key || convert_to(
               concat_ws('|', org, usr, org_role, app_roles, pg_backend_pid()::text,
                         extract(epoch FROM transaction_timestamp())::text), 'UTF8'))), 'hex')
      FROM orgbase.context_key k WHERE k.id = 1
$$;

CREATE OR REPLACE FUNCTION orgbase.ctx(OUT org_id uuid, OUT user_id uuid, OUT org_role text, OUT app_roles text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    o text := current_setting('orgbase.org_id', true);
    u text := current_setting('orgbase.user_id', true);
    r text := current_setting('orgbase.org_role', true);
    a text := current_setting('orgbase.app_roles', true);
    m text := current_setting('orgbase.ctx_mac', true);
BEGIN
    IF coalesce(o, '') = '' OR coalesce(m, '') = '' THEN
        RAISE EXCEPTION 'no tenant context in this transaction'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_no_context';
    END IF;
    IF m IS DISTINCT FROM orgbase.ctx_mac(o, u, r, a) THEN
        RAISE EXCEPTION 'invalid tenant context'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_bad_context';
    END IF;
    org_id := o::uuid;
    user_id := u::uuid;
    org_role := r;
    app_roles := a;
END
$$;


ALTER TABLE orgbase.members DROP COLUMN updated_at, DROP COLUMN deleted_at;
ALTER TABLE orgbase.users DROP COLUMN totp_enabled;

CREATE FUNCTION orgbase.make_tenant_table(tbl regclass, app text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    t text := tbl::text;
    n text := (SELECT c.relname FROM pg_class c WHERE c.oid = tbl);
BEGIN
    EXECUTE format($f$
        ALTER TABLE %1$s
            ADD COLUMN IF NOT EXISTS org_id uuid NOT NULL,
            ADD COLUMN IF NOT EXISTS id uuid NOT NULL DEFAULT gen_random_uuid(),
            ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN IF NOT EXISTS deleted_at timestamptz,
            ADD COLUMN IF NOT EXISTS created_by uuid NOT NULL,
            ADD COLUMN IF NOT EXISTS updated_by uuid NOT NULL
    $f$, t);
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = tbl AND contype = 'p') THEN
        EXECUTE format('ALTER TABLE %s ADD PRIMARY KEY (org_id, id)', t);
    END IF;
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_select ON %s FOR SELECT USING (orgbase.ctx_allows(org_id, created_by, %L, ''read''))', t, app);
    EXECUTE format('CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK (orgbase.ctx_allows(org_id, created_by, %L, ''insert'') AND created_by = orgbase.ctx_user() AND updated_by = orgbase.ctx_user())', t, app);
    EXECUTE format('CREATE POLICY tenant_update ON %s FOR UPDATE USING (orgbase.ctx_allows(org_id, created_by, %L, ''update'')) WITH CHECK (org_id = orgbase.ctx_org())', t, app);
    EXECUTE format('CREATE POLICY tenant_delete ON %s FOR DELETE USING (orgbase.ctx_allows(org_id, created_by, %L, ''delete''))', t, app);
    EXECUTE format('CREATE INDEX %I ON %s (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL', n || '_recent_idx', t);
    EXECUTE format('CREATE TRIGGER touch_row BEFORE UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION orgbase.touch_row()', t);
    INSERT INTO orgbase.tenant_tables (table_name, app) VALUES (tbl, app);
END
$$;
REVOKE ALL ON FUNCTION orgbase.make_tenant_table(regclass, text) FROM PUBLIC;

CREATE FUNCTION orgbase.begin_request(token_hash bytea, org_ref text)
RETURNS TABLE (org_id uuid, user_id uuid, org_role text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    s record;
    o uuid;
    r text;
    a text;
BEGIN
    IF current_setting('orgbase.ctx_mac', true) <> '' THEN
        RAISE EXCEPTION 'the tenant context is already set in this transaction'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_context_twice';
    END IF;
    SELECT se.id, se.user_id, se.last_seen_at INTO s
      FROM orgbase.sessions se JOIN orgbase.users us ON us.id = se.user_id
     WHERE se.token_hash = begin_request.token_hash
       AND se.revoked_at IS NULL
       AND se.expires_at > now()
       AND se.last_seen_at + se.idle_timeout > now()
       AND us.status = 'active' AND us.deleted_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invalid or expired session'
            USING ERRCODE = 'invalid_authorization_specification', HINT = 'orgbase_unauthenticated';
    END IF;
    IF s.last_seen_at < now() - interval '60 seconds' THEN
        UPDATE orgbase.sessions SET last_seen_at = now() WHERE id = s.id;
    END IF;
    SELECT m.org_id, m.role INTO o, r
      FROM orgbase.members m JOIN orgbase.organizations og ON og.id = m.org_id
     WHERE m.user_id = s.user_id AND og.deleted_at IS NULL
       AND (og.slug = org_ref OR og.id::text = org_ref);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such organization, or not a member'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_not_member';
    END IF;
    SELECT coalesce(string_agg(p.app || '=' || p.role, ',' ORDER BY p.app), '') INTO a
      FROM orgbase.app_permissions p WHERE p.org_id = o AND p.user_id = s.user_id;
    PERFORM set_config('orgbase.org_id', o::text, true),
            set_config('orgbase.user_id', s.user_id::text, true),
            set_config('orgbase.org_role', r, true),
            set_config('orgbase.app_roles', a, true),
            set_config('orgbase.ctx_mac', orgbase.ctx_mac(o::text, s.user_id::text, r, a), true);
    org_id := o;
    user_id := s.user_id;
    org_role := r;
    RETURN NEXT;
END
$$;
GRANT EXECUTE ON FUNCTION orgbase.begin_request(bytea, text) TO orgbase_runtime;
