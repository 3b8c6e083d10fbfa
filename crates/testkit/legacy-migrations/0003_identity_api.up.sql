-- The identity API (SPEC R7, R8): sign-up, login, sessions, API keys, TOTP, invitations, teams,
-- custom roles; and tenant policies that cost one context check per statement, not per row.
--
-- Who may do what (docs/security.md):
--   * Organization-scoped identity tables (members, app_permissions, invitations, teams,
--     team_members, api_keys, roles, member_roles) are readable and writable by the runtime role
--     under row-level security keyed on the verified tenant context, so SQL run as the runtime
--     role inside org A can at most do what an org-A admin can do through the API.
--     RLS is enabled but not forced on them: the SECURITY DEFINER functions below run as their
--     owner and must see across organizations (to authenticate a token, say).
--   * users and sessions stay closed to the runtime role. The functions that would let a
--     runtime mint a session or read a password hash (login_lookup, create_session,
--     totp_secret, totp_confirm) demand a server proof: an NMAC over the arguments and a
--     timestamp, keyed by orgbase.context_key, which the orgbase server reads at start with its
--     administrative connection and the runtime role cannot read.

ALTER TABLE orgbase.users ADD COLUMN totp_enabled boolean NOT NULL DEFAULT false;
ALTER TABLE orgbase.members
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN deleted_at timestamptz;

-- Faster context checks (measured: SQL-language functions are planned on every call, plpgsql
-- caches its plans). Same MAC, same errors.
CREATE OR REPLACE FUNCTION orgbase.ctx_mac(org text, usr text, org_role text, app_roles text)
RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    k record;
BEGIN
    SELECT inner_key, outer_key INTO k FROM orgbase.context_key WHERE id = 1;
    RETURN encode(sha256(k.outer_key || sha256(k.inner_key || convert_to(
               concat_ws('|', org, usr, org_role, app_roles, pg_backend_pid()::text,
                         extract(epoch FROM transaction_timestamp())::text), 'UTF8'))), 'hex');
END
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
    k record;
BEGIN
    IF coalesce(o, '') = '' OR coalesce(m, '') = '' THEN
        RAISE EXCEPTION 'no tenant context in this transaction'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_no_context';
    END IF;
    SELECT inner_key, outer_key INTO k FROM orgbase.context_key WHERE id = 1;
    IF m IS DISTINCT FROM encode(sha256(k.outer_key || sha256(k.inner_key || convert_to(
               concat_ws('|', o, u, r, a, pg_backend_pid()::text,
                         extract(epoch FROM transaction_timestamp())::text), 'UTF8'))), 'hex') THEN
        RAISE EXCEPTION 'invalid tenant context'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_bad_context';
    END IF;
    org_id := o::uuid;
    user_id := u::uuid;
    org_role := r;
    app_roles := a;
END
$$;

-- Server proofs ------------------------------------------------------------------------------

CREATE FUNCTION orgbase.require_proof(purpose text, msg text, issued_at bigint, proof bytea)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    ok boolean;
BEGIN
    SELECT abs(extract(epoch FROM now()) - issued_at) <= 300
           AND proof = sha256(k.outer_key || sha256(k.inner_key || convert_to(
               'srv|' || purpose || '|' || msg || '|' || issued_at::text, 'UTF8')))
      INTO ok
      FROM orgbase.context_key k WHERE k.id = 1;
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'this operation needs a server proof'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_bad_proof';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION orgbase.require_proof(text, text, bigint, bytea) FROM PUBLIC;

-- Context helpers: evaluated once per statement when wrapped in a scalar subquery -------------

CREATE FUNCTION orgbase.ctx_org_role() RETURNS text
LANGUAGE sql STABLE
AS $$ SELECT (orgbase.ctx()).org_role $$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_org_role() TO orgbase_runtime, orgbase_readonly;

-- The caller's level in an app: 0 none, 1 viewer, 2 editor, 3 admin (org owners and admins).
CREATE FUNCTION orgbase.ctx_app_level(app text) RETURNS int
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record := orgbase.ctx();
    r text;
BEGIN
    IF c.org_role IN ('owner', 'admin') THEN
        RETURN 3;
    END IF;
    SELECT split_part(x, '=', 2) INTO r
      FROM unnest(string_to_array(c.app_roles, ',')) x
     WHERE split_part(x, '=', 1) = app;
    RETURN CASE r WHEN 'admin' THEN 3 WHEN 'editor' THEN 2 WHEN 'viewer' THEN 1 ELSE 0 END;
END
$$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_app_level(text) TO orgbase_runtime, orgbase_readonly;

-- Tenant policies --------------------------------------------------------------------------

-- The role matrix of SPEC R3 as four policies:
--   read   own row, or viewer/editor/admin of the app
--   insert editor/admin, rows created as the caller
--   update own row, or editor/admin; soft-deleting (deleted_at set) needs delete rights
--   delete own row, or admin
-- By default the context calls are scalar subqueries, which PostgreSQL evaluates once per
-- statement (an InitPlan) and can use as index keys. Citus forbids subqueries in policies:
-- with citus => true the policies call the functions directly (once per row).
CREATE FUNCTION orgbase.tenant_policies(tbl regclass, app text, citus boolean DEFAULT false)
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
    EXECUTE format('CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK (org_id = %s AND %s >= 2 AND created_by = %s AND updated_by = %s)',
                   tbl, o, l, u, u);
    EXECUTE format('CREATE POLICY tenant_update ON %s FOR UPDATE USING (org_id = %s AND (%s >= 2 OR created_by = %s)) '
                   'WITH CHECK (org_id = %s AND (deleted_at IS NULL OR %s >= 3 OR created_by = %s))',
                   tbl, o, l, u, o, l, u);
    EXECUTE format('CREATE POLICY tenant_delete ON %s FOR DELETE USING (org_id = %s AND (%s >= 3 OR created_by = %s))',
                   tbl, o, l, u);
END
$$;
REVOKE ALL ON FUNCTION orgbase.tenant_policies(regclass, text, boolean) FROM PUBLIC;

DROP FUNCTION orgbase.make_tenant_table(regclass, text);
-- Turn a table into a tenant table (SPEC R1, R6). Call it from a migration, as the owner:
--     SELECT orgbase.make_tenant_table('myschema.invoices', 'billing');
-- Adds the standard columns (org_id, id, created_at, updated_at, deleted_at, created_by,
-- updated_by; org_id and the *_by columns default to the request's context), the primary key
-- (org_id, id), forced row-level security with the role-matrix policies, the index for newest-first
-- listing without deleted rows, the updated_at/updated_by trigger (the audit hook point, R6), and
-- registers the table for the generic API under its app.
CREATE FUNCTION orgbase.make_tenant_table(tbl regclass, app text, citus boolean DEFAULT false)
RETURNS void
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
    -- Separately: ADD COLUMN would evaluate these defaults once, outside any context.
    EXECUTE format($f$
        ALTER TABLE %1$s
            ALTER COLUMN org_id SET DEFAULT orgbase.ctx_org(),
            ALTER COLUMN created_by SET DEFAULT orgbase.ctx_user(),
            ALTER COLUMN updated_by SET DEFAULT orgbase.ctx_user()
    $f$, t);
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = tbl AND contype = 'p') THEN
        EXECUTE format('ALTER TABLE %s ADD PRIMARY KEY (org_id, id)', t);
    END IF;
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
    PERFORM orgbase.tenant_policies(tbl, app, citus);
    EXECUTE format('CREATE INDEX %I ON %s (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL', n || '_recent_idx', t);
    EXECUTE format('CREATE TRIGGER touch_row BEFORE UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION orgbase.touch_row()', t);
    INSERT INTO orgbase.tenant_tables (table_name, app) VALUES (tbl, app);
END
$$;
REVOKE ALL ON FUNCTION orgbase.make_tenant_table(regclass, text, boolean) FROM PUBLIC;

SELECT orgbase.tenant_policies('orgbase.notes', 'notes');
ALTER TABLE orgbase.notes
    ALTER COLUMN org_id SET DEFAULT orgbase.ctx_org(),
    ALTER COLUMN created_by SET DEFAULT orgbase.ctx_user(),
    ALTER COLUMN updated_by SET DEFAULT orgbase.ctx_user();

-- The generic API reads the catalog of tenant tables.
GRANT SELECT ON orgbase.tenant_tables TO orgbase_runtime;

-- Organization-scoped identity tables ------------------------------------------------------

CREATE TABLE orgbase.invitations (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    email text NOT NULL CHECK (email = lower(email) AND position('@' IN email) > 1 AND length(email) <= 320),
    role text NOT NULL CHECK (role IN ('admin', 'manager', 'member')),
    token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    invited_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL DEFAULT now() + interval '7 days',
    accepted_at timestamptz,
    accepted_by uuid REFERENCES orgbase.users (id),
    revoked_at timestamptz,
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, invited_by) REFERENCES orgbase.members (org_id, user_id)
);

CREATE TABLE orgbase.teams (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    PRIMARY KEY (org_id, id),
    UNIQUE (org_id, name),
    FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id)
);

CREATE TABLE orgbase.team_members (
    org_id uuid NOT NULL,
    team_id uuid NOT NULL,
    user_id uuid NOT NULL,
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, team_id, user_id),
    FOREIGN KEY (org_id, team_id) REFERENCES orgbase.teams (org_id, id) ON DELETE CASCADE,
    FOREIGN KEY (org_id, user_id) REFERENCES orgbase.members (org_id, user_id)
);

-- Scopes: '<app>:read', '<app>:write', '<app>:admin', '*:read', '*:write', '*:admin', and
-- 'admin' (organization administration, when the key's creator is an owner or admin).
CREATE TABLE orgbase.api_keys (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    prefix text NOT NULL CHECK (length(prefix) BETWEEN 4 AND 16),
    key_hash bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    user_id uuid NOT NULL DEFAULT orgbase.ctx_user(),
    scopes text[] NOT NULL CHECK (cardinality(scopes) BETWEEN 1 AND 64),
    ip_allow cidr[] NOT NULL DEFAULT '{}',
    expires_at timestamptz,
    last_used_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, user_id) REFERENCES orgbase.members (org_id, user_id)
);

CREATE FUNCTION orgbase.valid_scopes(scopes text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT bool_and(s = 'admin' OR s ~ '^(\*|[a-z][a-z0-9_]{0,62}):(read|write|admin)$')
      FROM unnest(scopes) s
$$;
GRANT EXECUTE ON FUNCTION orgbase.valid_scopes(text[]) TO orgbase_runtime;
ALTER TABLE orgbase.api_keys ADD CHECK (orgbase.valid_scopes(scopes));

-- Custom roles: named permissions ('<app>:viewer|editor|admin') granted to members.
CREATE TABLE orgbase.roles (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    permissions text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    PRIMARY KEY (org_id, id),
    UNIQUE (org_id, name)
);
CREATE FUNCTION orgbase.valid_permissions(perms text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT coalesce(bool_and(p ~ '^[a-z][a-z0-9_]{0,62}:(viewer|editor|admin)$'), true)
      FROM unnest(perms) p
$$;
GRANT EXECUTE ON FUNCTION orgbase.valid_permissions(text[]) TO orgbase_runtime;
ALTER TABLE orgbase.roles ADD CHECK (orgbase.valid_permissions(permissions));

CREATE TABLE orgbase.member_roles (
    org_id uuid NOT NULL,
    user_id uuid NOT NULL,
    role_id uuid NOT NULL,
    granted_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id, role_id),
    FOREIGN KEY (org_id, user_id) REFERENCES orgbase.members (org_id, user_id),
    FOREIGN KEY (org_id, role_id) REFERENCES orgbase.roles (org_id, id) ON DELETE CASCADE
);

-- The caller when there is a context, else NULL (maintenance by the administrator).
CREATE FUNCTION orgbase.ctx_user_if_any() RETURNS uuid
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN coalesce(current_setting('orgbase.ctx_mac', true), '') <> ''
                THEN orgbase.ctx_user() END
$$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_user_if_any() TO orgbase_runtime;
ALTER TABLE orgbase.app_permissions ALTER COLUMN granted_by SET DEFAULT orgbase.ctx_user_if_any();

-- Row-level security on the organization-scoped identity tables.
CREATE FUNCTION orgbase.ctx_is_admin() RETURNS boolean
LANGUAGE sql STABLE
AS $$ SELECT orgbase.ctx_org_role() IN ('owner', 'admin') $$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_is_admin() TO orgbase_runtime;

ALTER TABLE orgbase.organizations ENABLE ROW LEVEL SECURITY;
CREATE POLICY org_read ON orgbase.organizations FOR SELECT USING (id = (SELECT orgbase.ctx_org()));
CREATE POLICY org_update ON orgbase.organizations FOR UPDATE
    USING (id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));
GRANT SELECT, UPDATE (name, settings, compliance, updated_at) ON orgbase.organizations TO orgbase_runtime;

ALTER TABLE orgbase.members ENABLE ROW LEVEL SECURITY;
CREATE POLICY member_read ON orgbase.members FOR SELECT USING (org_id = (SELECT orgbase.ctx_org()));
-- Admins manage members; only owners make or unmake owners.
CREATE POLICY member_insert ON orgbase.members FOR INSERT WITH CHECK (
    org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin())
    AND (role <> 'owner' OR (SELECT orgbase.ctx_org_role()) = 'owner'));
CREATE POLICY member_update ON orgbase.members FOR UPDATE
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin())
           AND (role <> 'owner' OR (SELECT orgbase.ctx_org_role()) = 'owner'))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org())
           AND (role <> 'owner' OR (SELECT orgbase.ctx_org_role()) = 'owner'));
GRANT SELECT, INSERT (org_id, user_id, role), UPDATE (role, updated_at, deleted_at)
    ON orgbase.members TO orgbase_runtime;

-- An organization always keeps an active owner.
CREATE FUNCTION orgbase.members_keep_owner() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM orgbase.members
                    WHERE org_id = NEW.org_id AND role = 'owner' AND deleted_at IS NULL) THEN
        RAISE EXCEPTION 'an organization needs at least one owner'
            USING ERRCODE = 'check_violation', HINT = 'orgbase_last_owner';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER members_keep_owner AFTER UPDATE ON orgbase.members
    FOR EACH ROW EXECUTE FUNCTION orgbase.members_keep_owner();

ALTER TABLE orgbase.app_permissions ENABLE ROW LEVEL SECURITY;
CREATE POLICY app_permission_read ON orgbase.app_permissions FOR SELECT
    USING (org_id = (SELECT orgbase.ctx_org()));
CREATE POLICY app_permission_write ON orgbase.app_permissions FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));
GRANT SELECT, INSERT, UPDATE, DELETE ON orgbase.app_permissions TO orgbase_runtime;

ALTER TABLE orgbase.invitations ENABLE ROW LEVEL SECURITY;
CREATE POLICY invitation_admin ON orgbase.invitations FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin())
                AND invited_by = (SELECT orgbase.ctx_user()));
REVOKE ALL ON orgbase.invitations FROM orgbase_runtime;
GRANT SELECT (org_id, id, email, role, invited_by, created_at, expires_at, accepted_at, accepted_by, revoked_at),
      INSERT (org_id, id, email, role, token_hash, expires_at),
      UPDATE (revoked_at)
    ON orgbase.invitations TO orgbase_runtime;

ALTER TABLE orgbase.teams ENABLE ROW LEVEL SECURITY;
CREATE POLICY team_read ON orgbase.teams FOR SELECT USING (org_id = (SELECT orgbase.ctx_org()));
CREATE POLICY team_write ON orgbase.teams FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_org_role()) IN ('owner', 'admin', 'manager'))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_org_role()) IN ('owner', 'admin', 'manager'));

ALTER TABLE orgbase.team_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY team_member_read ON orgbase.team_members FOR SELECT USING (org_id = (SELECT orgbase.ctx_org()));
CREATE POLICY team_member_write ON orgbase.team_members FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_org_role()) IN ('owner', 'admin', 'manager'))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_org_role()) IN ('owner', 'admin', 'manager'));

ALTER TABLE orgbase.api_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY api_key_admin ON orgbase.api_keys FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin())
                AND user_id = (SELECT orgbase.ctx_user()));
REVOKE ALL ON orgbase.api_keys FROM orgbase_runtime;
GRANT SELECT (org_id, id, name, prefix, user_id, scopes, ip_allow, expires_at, last_used_at, created_at, revoked_at),
      INSERT (org_id, id, name, prefix, key_hash, scopes, ip_allow, expires_at),
      UPDATE (revoked_at)
    ON orgbase.api_keys TO orgbase_runtime;

ALTER TABLE orgbase.roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY role_read ON orgbase.roles FOR SELECT USING (org_id = (SELECT orgbase.ctx_org()));
CREATE POLICY role_write ON orgbase.roles FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));

ALTER TABLE orgbase.member_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY member_role_read ON orgbase.member_roles FOR SELECT USING (org_id = (SELECT orgbase.ctx_org()));
CREATE POLICY member_role_write ON orgbase.member_roles FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));

-- The request context ----------------------------------------------------------------------

-- The app roles of a member: direct app permissions and custom-role permissions, the highest
-- per app, as 'app=role,…'.
CREATE FUNCTION orgbase.member_app_roles(org uuid, usr uuid) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM orgbase.member_roles mr WHERE mr.org_id = org AND mr.user_id = usr) THEN
        RETURN coalesce((SELECT string_agg(p.app || '=' || p.role, ',' ORDER BY p.app)
                           FROM orgbase.app_permissions p
                          WHERE p.org_id = org AND p.user_id = usr), '');
    END IF;
    RETURN (
    SELECT coalesce(string_agg(app || '=' || (ARRAY['viewer', 'editor', 'admin'])[lvl], ',' ORDER BY app), '')
      FROM (SELECT app, max(lvl) AS lvl
              FROM (SELECT p.app, array_position(ARRAY['viewer', 'editor', 'admin'], p.role) AS lvl
                      FROM orgbase.app_permissions p
                     WHERE p.org_id = org AND p.user_id = usr
                    UNION ALL
                    SELECT split_part(x, ':', 1),
                           array_position(ARRAY['viewer', 'editor', 'admin'], split_part(x, ':', 2))
                      FROM orgbase.member_roles mr
                      JOIN orgbase.roles r ON r.org_id = mr.org_id AND r.id = mr.role_id
                      CROSS JOIN unnest(r.permissions) x
                     WHERE mr.org_id = org AND mr.user_id = usr) g
             GROUP BY app) m);
END
$$;
REVOKE ALL ON FUNCTION orgbase.member_app_roles(uuid, uuid) FROM PUBLIC;

-- An organization id from an id or a slug (NULL when neither), each by its own index.
CREATE FUNCTION orgbase.org_of_ref(org_ref text) RETURNS uuid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF org_ref ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RETURN (SELECT o.id FROM orgbase.organizations o WHERE o.id = org_ref::uuid AND o.deleted_at IS NULL);
    END IF;
    RETURN (SELECT o.id FROM orgbase.organizations o WHERE o.slug = org_ref AND o.deleted_at IS NULL);
END
$$;
REVOKE ALL ON FUNCTION orgbase.org_of_ref(text) FROM PUBLIC;

DROP FUNCTION orgbase.begin_request(bytea, text);
-- Establish the tenant context of this transaction from a credential hash (session token or
-- API key) and an organization id or slug. Errors carry a HINT the server maps to a status:
--   orgbase_unauthenticated (401)  unknown, expired or revoked credential, inactive user
--   orgbase_not_member (404)       no such organization, or the caller is not a member
--   orgbase_mfa_required (403)     the organization requires MFA and the session has not passed it
--   orgbase_ip_not_allowed (403)   API key used from outside its IP allow-list
--   orgbase_context_twice (403)    the context is already set in this transaction
CREATE FUNCTION orgbase.begin_request(cred_hash bytea, org_ref text, client_ip inet DEFAULT NULL)
RETURNS TABLE (org_id uuid, user_id uuid, org_role text, app_roles text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    uid uuid;
    sid uuid;
    seen timestamptz;
    mfa boolean;
    k record;
    o uuid;
    r text;
    a text;
    need_mfa boolean;
    target uuid;
BEGIN
    IF coalesce(current_setting('orgbase.ctx_mac', true), '') <> '' THEN
        RAISE EXCEPTION 'the tenant context is already set in this transaction'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_context_twice';
    END IF;
    SELECT se.id, se.user_id, se.last_seen_at, se.mfa_passed INTO sid, uid, seen, mfa
      FROM orgbase.sessions se JOIN orgbase.users us ON us.id = se.user_id
     WHERE se.token_hash = cred_hash
       AND se.revoked_at IS NULL
       AND se.expires_at > now()
       AND se.last_seen_at + se.idle_timeout > now()
       AND us.status = 'active' AND us.deleted_at IS NULL;
    IF FOUND THEN
        IF seen < now() - interval '60 seconds' THEN
            UPDATE orgbase.sessions SET last_seen_at = now() WHERE id = sid;
        END IF;
        IF org_ref ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
            target := org_ref::uuid;
        ELSE
            SELECT og.id INTO target FROM orgbase.organizations og WHERE og.slug = org_ref;
        END IF;
        SELECT m.org_id, m.role, coalesce((og.settings ->> 'require_mfa')::boolean, false)
          INTO o, r, need_mfa
          FROM orgbase.members m JOIN orgbase.organizations og ON og.id = m.org_id
         WHERE m.org_id = target AND m.user_id = uid AND m.deleted_at IS NULL AND og.deleted_at IS NULL;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no such organization, or not a member'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_not_member';
        END IF;
        IF need_mfa AND NOT mfa THEN
            RAISE EXCEPTION 'this organization requires multi-factor authentication'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_mfa_required';
        END IF;
        a := orgbase.member_app_roles(o, uid);
    ELSE
        SELECT ak.id, ak.org_id, ak.user_id, ak.scopes, ak.ip_allow, ak.last_used_at, m.role,
               ak.org_id IS NOT DISTINCT FROM orgbase.org_of_ref(org_ref) AS org_matches
          INTO k
          FROM orgbase.api_keys ak
          JOIN orgbase.organizations og ON og.id = ak.org_id
          JOIN orgbase.members m ON m.org_id = ak.org_id AND m.user_id = ak.user_id
          JOIN orgbase.users us ON us.id = ak.user_id
         WHERE ak.key_hash = cred_hash
           AND ak.revoked_at IS NULL
           AND (ak.expires_at IS NULL OR ak.expires_at > now())
           AND m.deleted_at IS NULL AND og.deleted_at IS NULL
           AND us.status = 'active' AND us.deleted_at IS NULL;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'invalid or expired credential'
                USING ERRCODE = 'invalid_authorization_specification', HINT = 'orgbase_unauthenticated';
        END IF;
        IF NOT k.org_matches THEN
            RAISE EXCEPTION 'no such organization, or not a member'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_not_member';
        END IF;
        IF cardinality(k.ip_allow) > 0
           AND (client_ip IS NULL OR NOT client_ip <<= ANY (k.ip_allow)) THEN
            RAISE EXCEPTION 'this API key may not be used from this address'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_ip_not_allowed';
        END IF;
        IF k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds' THEN
            UPDATE orgbase.api_keys SET last_used_at = now() WHERE api_keys.id = k.id AND api_keys.org_id = k.org_id;
        END IF;
        o := k.org_id;
        uid := k.user_id;
        -- A key acts as its creator, narrowed by its scopes.
        r := CASE WHEN 'admin' = ANY (k.scopes) THEN k.role
                  WHEN k.role = 'owner' OR k.role = 'admin' THEN 'member'
                  ELSE k.role END;
        SELECT coalesce(string_agg(app || '=' || (ARRAY['viewer', 'editor', 'admin'])[lvl], ',' ORDER BY app), '')
          INTO a
          FROM (SELECT apps.app,
                       least(CASE WHEN k.role IN ('owner', 'admin') THEN 3
                                  ELSE coalesce(array_position(ARRAY['viewer', 'editor', 'admin'],
                                       split_part((SELECT x FROM unnest(string_to_array(orgbase.member_app_roles(o, uid), ',')) x
                                                    WHERE split_part(x, '=', 1) = apps.app), '=', 2)), 0) END,
                             (SELECT max(CASE split_part(s, ':', 2) WHEN 'read' THEN 1 WHEN 'write' THEN 2 WHEN 'admin' THEN 3 END)
                                FROM unnest(k.scopes) s
                               WHERE split_part(s, ':', 1) IN (apps.app, '*'))) AS lvl
                  FROM (SELECT DISTINCT t.app FROM orgbase.tenant_tables t
                        UNION SELECT p.app FROM orgbase.app_permissions p WHERE p.org_id = o) apps) g
         WHERE lvl > 0;
    END IF;
    PERFORM set_config('orgbase.org_id', o::text, true),
            set_config('orgbase.user_id', uid::text, true),
            set_config('orgbase.org_role', r, true),
            set_config('orgbase.app_roles', a, true),
            set_config('orgbase.ctx_mac', orgbase.ctx_mac(o::text, uid::text, r, a), true);
    org_id := o;
    user_id := uid;
    org_role := r;
    app_roles := a;
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION orgbase.begin_request(bytea, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.begin_request(bytea, text, inet) TO orgbase_runtime;

-- Account functions (no organization context) ---------------------------------------------

-- A valid session of a token hash, or an orgbase_unauthenticated error.
CREATE FUNCTION orgbase.session_of(token_hash bytea)
RETURNS TABLE (session_id uuid, user_id uuid, mfa_passed boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    RETURN QUERY
    SELECT se.id, se.user_id, se.mfa_passed
      FROM orgbase.sessions se JOIN orgbase.users us ON us.id = se.user_id
     WHERE se.token_hash = session_of.token_hash
       AND se.revoked_at IS NULL AND se.expires_at > now()
       AND se.last_seen_at + se.idle_timeout > now()
       AND us.status = 'active' AND us.deleted_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invalid or expired session'
            USING ERRCODE = 'invalid_authorization_specification', HINT = 'orgbase_unauthenticated';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION orgbase.session_of(bytea) FROM PUBLIC;

CREATE FUNCTION orgbase.signup(id uuid, email text, name text, password_hash text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    INSERT INTO orgbase.users (id, email, name, password_hash)
    VALUES (signup.id, signup.email, signup.name, signup.password_hash);
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'an account with this email already exists'
        USING ERRCODE = 'unique_violation', HINT = 'orgbase_email_taken';
END
$$;
REVOKE ALL ON FUNCTION orgbase.signup(uuid, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.signup(uuid, text, text, text) TO orgbase_runtime;

CREATE FUNCTION orgbase.login_lookup(email text, issued_at bigint, proof bytea)
RETURNS TABLE (user_id uuid, password_hash text, status text, totp_enabled boolean, totp_secret bytea)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    PERFORM orgbase.require_proof('login', login_lookup.email, issued_at, proof);
    RETURN QUERY
    SELECT u.id, u.password_hash, u.status, u.totp_enabled, u.totp_secret
      FROM orgbase.users u WHERE u.email = login_lookup.email AND u.deleted_at IS NULL;
END
$$;
REVOKE ALL ON FUNCTION orgbase.login_lookup(text, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.login_lookup(text, bigint, bytea) TO orgbase_runtime;

CREATE FUNCTION orgbase.create_session(
    id uuid, user_id uuid, token_hash bytea, refresh_hash bytea, ip inet, user_agent text,
    mfa_passed boolean, idle_timeout interval, lifetime interval, issued_at bigint, proof bytea)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    exp timestamptz := now() + lifetime;
BEGIN
    PERFORM orgbase.require_proof('session',
        concat_ws('|', create_session.user_id::text, encode(create_session.token_hash, 'hex'),
                  encode(create_session.refresh_hash, 'hex'), create_session.mfa_passed::text),
        issued_at, proof);
    INSERT INTO orgbase.sessions (id, user_id, token_hash, refresh_hash, ip, user_agent,
                                  mfa_passed, idle_timeout, expires_at)
    VALUES (create_session.id, create_session.user_id, create_session.token_hash,
            create_session.refresh_hash, ip, left(user_agent, 512), create_session.mfa_passed,
            create_session.idle_timeout, exp);
    RETURN exp;
END
$$;
REVOKE ALL ON FUNCTION orgbase.create_session(uuid, uuid, bytea, bytea, inet, text, boolean, interval, interval, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.create_session(uuid, uuid, bytea, bytea, inet, text, boolean, interval, interval, bigint, bytea) TO orgbase_runtime;

-- Rotate a session: the old token and refresh token stop working, the absolute expiry stays.
CREATE FUNCTION orgbase.refresh_session(refresh_hash bytea, new_id uuid, new_token_hash bytea,
                                        new_refresh_hash bytea, ip inet, user_agent text)
RETURNS TABLE (expires_at timestamptz, user_id uuid, mfa_passed boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    s record;
BEGIN
    UPDATE orgbase.sessions se SET revoked_at = now()
      FROM orgbase.users us
     WHERE us.id = se.user_id
       AND se.refresh_hash = refresh_session.refresh_hash
       AND se.revoked_at IS NULL AND se.expires_at > now()
       AND us.status = 'active' AND us.deleted_at IS NULL
    RETURNING se.user_id, se.mfa_passed, se.idle_timeout, se.expires_at INTO s;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invalid or expired refresh token'
            USING ERRCODE = 'invalid_authorization_specification', HINT = 'orgbase_unauthenticated';
    END IF;
    INSERT INTO orgbase.sessions (id, user_id, token_hash, refresh_hash, ip, user_agent,
                                  mfa_passed, idle_timeout, expires_at)
    VALUES (new_id, s.user_id, new_token_hash, new_refresh_hash, ip, left(user_agent, 512),
            s.mfa_passed, s.idle_timeout, s.expires_at);
    expires_at := s.expires_at;
    user_id := s.user_id;
    mfa_passed := s.mfa_passed;
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION orgbase.refresh_session(bytea, uuid, bytea, bytea, inet, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.refresh_session(bytea, uuid, bytea, bytea, inet, text) TO orgbase_runtime;

CREATE FUNCTION orgbase.logout(token_hash bytea) RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
    WITH r AS (UPDATE orgbase.sessions SET revoked_at = now()
                WHERE sessions.token_hash = logout.token_hash AND revoked_at IS NULL RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM r)
$$;
REVOKE ALL ON FUNCTION orgbase.logout(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.logout(bytea) TO orgbase_runtime;

CREATE FUNCTION orgbase.me(token_hash bytea) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM orgbase.session_of(token_hash);
    RETURN (
        SELECT jsonb_build_object(
            'id', u.id, 'email', u.email, 'name', u.name, 'status', u.status,
            'mfa_enabled', u.totp_enabled, 'mfa_passed', s.mfa_passed, 'created_at', u.created_at,
            'organizations', coalesce((
                SELECT jsonb_agg(jsonb_build_object('id', o.id, 'slug', o.slug, 'name', o.name,
                                                    'role', m.role, 'region', o.region) ORDER BY o.slug)
                  FROM orgbase.members m JOIN orgbase.organizations o ON o.id = m.org_id
                 WHERE m.user_id = u.id AND m.deleted_at IS NULL AND o.deleted_at IS NULL), '[]'))
          FROM orgbase.users u WHERE u.id = s.user_id);
END
$$;
REVOKE ALL ON FUNCTION orgbase.me(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.me(bytea) TO orgbase_runtime;

CREATE FUNCTION orgbase.org_json(org uuid) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, orgbase
AS $$
    SELECT jsonb_build_object('id', o.id, 'name', o.name, 'slug', o.slug, 'owner_id', o.owner_id,
                              'settings', o.settings, 'region', o.region, 'compliance', o.compliance,
                              'created_at', o.created_at, 'updated_at', o.updated_at)
      FROM orgbase.organizations o WHERE o.id = org
$$;
REVOKE ALL ON FUNCTION orgbase.org_json(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.org_json(uuid) TO orgbase_runtime;

CREATE FUNCTION orgbase.create_org(token_hash bytea, id uuid, name text, slug text, region text,
                                   compliance text[], settings jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    uid uuid := (SELECT s.user_id FROM orgbase.session_of(token_hash) s);
BEGIN
    INSERT INTO orgbase.organizations (id, name, slug, owner_id, region, compliance, settings)
    VALUES (create_org.id, create_org.name, create_org.slug, uid, create_org.region,
            create_org.compliance, create_org.settings);
    INSERT INTO orgbase.members (org_id, user_id, role) VALUES (create_org.id, uid, 'owner');
    RETURN orgbase.org_json(create_org.id);
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'an organization with this slug already exists'
        USING ERRCODE = 'unique_violation', HINT = 'orgbase_slug_taken';
END
$$;
REVOKE ALL ON FUNCTION orgbase.create_org(bytea, uuid, text, text, text, text[], jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.create_org(bytea, uuid, text, text, text, text[], jsonb) TO orgbase_runtime;

-- In an organization context: the user id of an email, for admins adding members.
CREATE FUNCTION orgbase.user_id_by_email(email text) RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF NOT orgbase.ctx_is_admin() THEN
        RAISE EXCEPTION 'only organization owners and admins may look up users'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
    END IF;
    RETURN (SELECT u.id FROM orgbase.users u
             WHERE u.email = lower(user_id_by_email.email) AND u.deleted_at IS NULL);
END
$$;
REVOKE ALL ON FUNCTION orgbase.user_id_by_email(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.user_id_by_email(text) TO orgbase_runtime;

-- In an organization context: its members with their names and emails.
CREATE FUNCTION orgbase.member_directory()
RETURNS TABLE (user_id uuid, email text, name text, role text, joined_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
    SELECT m.user_id, u.email, u.name, m.role, m.created_at
      FROM orgbase.members m JOIN orgbase.users u ON u.id = m.user_id
     WHERE m.org_id = orgbase.ctx_org() AND m.deleted_at IS NULL
     ORDER BY u.email
$$;
REVOKE ALL ON FUNCTION orgbase.member_directory() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.member_directory() TO orgbase_runtime;

CREATE FUNCTION orgbase.accept_invitation(token_hash bytea, invitation_hash bytea) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    uid uuid := (SELECT s.user_id FROM orgbase.session_of(token_hash) s);
    inv record;
BEGIN
    SELECT i.* INTO inv FROM orgbase.invitations i
     WHERE i.token_hash = invitation_hash AND i.accepted_at IS NULL AND i.revoked_at IS NULL
       AND i.expires_at > now()
     FOR UPDATE;
    IF NOT FOUND OR inv.email <> (SELECT u.email FROM orgbase.users u WHERE u.id = uid) THEN
        RAISE EXCEPTION 'no such invitation for this account, or it expired'
            USING ERRCODE = 'no_data_found', HINT = 'orgbase_no_invitation';
    END IF;
    INSERT INTO orgbase.members (org_id, user_id, role) VALUES (inv.org_id, uid, inv.role)
    ON CONFLICT (org_id, user_id) DO UPDATE SET role = EXCLUDED.role, deleted_at = NULL, updated_at = now()
        WHERE members.deleted_at IS NOT NULL;
    UPDATE orgbase.invitations SET accepted_at = now(), accepted_by = uid
     WHERE org_id = inv.org_id AND id = inv.id;
    RETURN orgbase.org_json(inv.org_id);
END
$$;
REVOKE ALL ON FUNCTION orgbase.accept_invitation(bytea, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.accept_invitation(bytea, bytea) TO orgbase_runtime;

-- TOTP: the server generates the secret and checks codes; the database keeps the secret.
CREATE FUNCTION orgbase.totp_enroll(token_hash bytea, secret bytea) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    uid uuid := (SELECT s.user_id FROM orgbase.session_of(token_hash) s);
    em text;
BEGIN
    UPDATE orgbase.users SET totp_secret = secret, updated_at = now()
     WHERE id = uid AND NOT totp_enabled
    RETURNING email INTO em;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'multi-factor authentication is already enabled'
            USING ERRCODE = 'unique_violation', HINT = 'orgbase_mfa_enabled';
    END IF;
    RETURN em;
END
$$;
REVOKE ALL ON FUNCTION orgbase.totp_enroll(bytea, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.totp_enroll(bytea, bytea) TO orgbase_runtime;

CREATE FUNCTION orgbase.totp_secret(token_hash bytea, issued_at bigint, proof bytea) RETURNS bytea
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    PERFORM orgbase.require_proof('totp', encode(token_hash, 'hex'), issued_at, proof);
    RETURN (SELECT u.totp_secret FROM orgbase.users u
             WHERE u.id = (SELECT s.user_id FROM orgbase.session_of(token_hash) s));
END
$$;
REVOKE ALL ON FUNCTION orgbase.totp_secret(bytea, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.totp_secret(bytea, bigint, bytea) TO orgbase_runtime;

-- After the server checked a code: MFA is on for the user, and this session passed it.
CREATE FUNCTION orgbase.totp_confirm(token_hash bytea, issued_at bigint, proof bytea) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    s record;
BEGIN
    PERFORM orgbase.require_proof('totp-ok', encode(token_hash, 'hex'), issued_at, proof);
    SELECT * INTO s FROM orgbase.session_of(token_hash);
    UPDATE orgbase.users SET totp_enabled = true, updated_at = now() WHERE id = s.user_id;
    UPDATE orgbase.sessions SET mfa_passed = true WHERE id = s.session_id;
END
$$;
REVOKE ALL ON FUNCTION orgbase.totp_confirm(bytea, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.totp_confirm(bytea, bigint, bytea) TO orgbase_runtime;
