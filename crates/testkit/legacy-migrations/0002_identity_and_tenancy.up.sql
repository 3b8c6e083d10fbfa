-- Identity, organizations, and the tenant context (SPEC R1–R8).
--
-- Tenant context threat model (docs/security.md): the runtime role may run any SQL it likes,
-- including `SELECT set_config('orgbase.org_id', '<other org>', true)`. It must still be unable
-- to act in another organization. So the context is established only by
-- orgbase.begin_request(), a SECURITY DEFINER function that authenticates the caller's session
-- token hash itself and then sets transaction-local settings together with a MAC over them,
-- the backend pid and the transaction start time, keyed by orgbase.context_key, which the
-- runtime role cannot read. Every policy checks the MAC (orgbase.ctx_*), so edited settings fail
-- closed with an error, and a MAC from one transaction is worthless in any other.

-- Keys for the context MAC: NMAC-SHA256 (HMAC's construction with independent inner and outer
-- keys), built from PostgreSQL's own sha256() so that no extension is needed.
CREATE TABLE orgbase.context_key (
    id int PRIMARY KEY CHECK (id = 1),
    inner_key bytea NOT NULL CHECK (length(inner_key) = 64),
    outer_key bytea NOT NULL CHECK (length(outer_key) = 64)
);
REVOKE ALL ON orgbase.context_key FROM orgbase_runtime, orgbase_readonly;
INSERT INTO orgbase.context_key
SELECT 1,
       uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()),
       uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid());

CREATE TABLE orgbase.users (
    id uuid PRIMARY KEY,
    email text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 320 AND position('@' IN email) > 1),
    name text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    password_hash text,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'suspended', 'pending')),
    totp_secret bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);
CREATE UNIQUE INDEX users_email_key ON orgbase.users (email);

CREATE TABLE orgbase.sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES orgbase.users (id) ON DELETE CASCADE,
    token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    refresh_hash bytea NOT NULL UNIQUE CHECK (length(refresh_hash) = 32),
    ip inet,
    user_agent text CHECK (length(user_agent) <= 512),
    mfa_passed boolean NOT NULL DEFAULT false,
    idle_timeout interval NOT NULL DEFAULT interval '24 hours',
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX sessions_user_idx ON orgbase.sessions (user_id);

CREATE TABLE orgbase.organizations (
    id uuid PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    slug text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    owner_id uuid NOT NULL REFERENCES orgbase.users (id),
    settings jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    region text NOT NULL DEFAULT 'us-east' CHECK (region IN (
        'us-east', 'eu-central', 'uk-south', 'canada-central', 'australia-east', 'singapore',
        'japan-east', 'india-central', 'brazil-south', 'south-africa', 'korea-central',
        'hong-kong', 'new-zealand', 'israel')),
    compliance text[] NOT NULL DEFAULT '{}'
        CHECK (compliance <@ ARRAY['gdpr', 'hipaa', 'soc2', 'iso27001', 'pci']),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);

CREATE TABLE orgbase.members (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES orgbase.users (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'manager', 'member')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX members_user_idx ON orgbase.members (user_id);

CREATE TABLE orgbase.app_permissions (
    org_id uuid NOT NULL,
    user_id uuid NOT NULL,
    app text NOT NULL CHECK (app ~ '^[a-z][a-z0-9_]{0,62}$'),
    role text NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
    granted_by uuid REFERENCES orgbase.users (id),
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id, app),
    FOREIGN KEY (org_id, user_id) REFERENCES orgbase.members (org_id, user_id) ON DELETE CASCADE
);

-- The MAC over a context.
CREATE FUNCTION orgbase.ctx_mac(org text, usr text, org_role text, app_roles text)
RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
    SELECT encode(sha256(k.outer_key || sha256(k.inner_key || convert_to(
               concat_ws('|', org, usr, org_role, app_roles, pg_backend_pid()::text,
                         extract(epoch FROM transaction_timestamp())::text), 'UTF8'))), 'hex')
      FROM orgbase.context_key k WHERE k.id = 1
$$;
REVOKE ALL ON FUNCTION orgbase.ctx_mac(text, text, text, text) FROM PUBLIC;

-- The verified context of this transaction; raises (fails closed) when missing or forged.
-- Returns org id, user id, org role and the app roles ('notes=editor,projects=viewer').
CREATE FUNCTION orgbase.ctx(OUT org_id uuid, OUT user_id uuid, OUT org_role text, OUT app_roles text)
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
GRANT EXECUTE ON FUNCTION orgbase.ctx() TO orgbase_runtime, orgbase_readonly;

CREATE FUNCTION orgbase.ctx_org() RETURNS uuid
LANGUAGE sql STABLE
AS $$ SELECT (orgbase.ctx()).org_id $$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_org() TO orgbase_runtime, orgbase_readonly;

CREATE FUNCTION orgbase.ctx_user() RETURNS uuid
LANGUAGE sql STABLE
AS $$ SELECT (orgbase.ctx()).user_id $$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_user() TO orgbase_runtime, orgbase_readonly;

-- The role matrix (SPEC R3) in one function, one MAC check per call:
--   read:   own row, or app role viewer/editor/admin
--   insert: app role editor/admin (created_by is checked separately)
--   update: own row, or app role editor/admin
--   delete: own row, or app role admin
-- Org owners and admins are admins of every app.
CREATE FUNCTION orgbase.ctx_allows(row_org uuid, row_owner uuid, app text, action text)
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record := orgbase.ctx();
    app_role text;
BEGIN
    IF row_org IS DISTINCT FROM c.org_id THEN
        RETURN false;
    END IF;
    IF c.org_role IN ('owner', 'admin') THEN
        app_role := 'admin';
    ELSE
        SELECT split_part(x, '=', 2) INTO app_role
          FROM unnest(string_to_array(c.app_roles, ',')) x
         WHERE split_part(x, '=', 1) = app;
    END IF;
    RETURN CASE action
        WHEN 'read' THEN row_owner = c.user_id OR app_role IN ('viewer', 'editor', 'admin')
        WHEN 'insert' THEN app_role IN ('editor', 'admin')
        WHEN 'update' THEN row_owner = c.user_id OR app_role IN ('editor', 'admin')
        WHEN 'delete' THEN row_owner = c.user_id OR app_role = 'admin'
        ELSE false
    END;
END
$$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_allows(uuid, uuid, text, text) TO orgbase_runtime, orgbase_readonly;

-- Establish the tenant context of this transaction from a session token hash and an
-- organization id or slug. Raises 28000 for a bad session, 42501 (hint orgbase_not_member) when
-- the caller is not a member of that organization (or it does not exist).
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

-- Tenant tables: the catalog of tables the generic API serves, and the helper that turns a
-- table into one (SPEC R6). Call it from a migration, as the owner:
--     SELECT orgbase.make_tenant_table('myschema.invoices', 'billing');
CREATE TABLE orgbase.tenant_tables (
    table_name regclass PRIMARY KEY,
    app text NOT NULL CHECK (app ~ '^[a-z][a-z0-9_]{0,62}$'),
    registered_at timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT ON orgbase.tenant_tables TO orgbase_readonly, orgbase_backup;

CREATE FUNCTION orgbase.touch_row() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    NEW.updated_at := now();
    -- Requests always have a context (the policies demand it); maintenance by the owner may not.
    IF coalesce(current_setting('orgbase.ctx_mac', true), '') <> '' THEN
        NEW.updated_by := orgbase.ctx_user();
    END IF;
    NEW.created_at := OLD.created_at;
    NEW.created_by := OLD.created_by;
    NEW.org_id := OLD.org_id;
    NEW.id := OLD.id;
    RETURN NEW;
END
$$;
GRANT EXECUTE ON FUNCTION orgbase.touch_row() TO orgbase_runtime;

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

-- Identity tables are not the runtime role's to read or write directly: a runtime that could
-- read session token hashes could call begin_request() as anyone, and one that could insert
-- into members could make itself an owner anywhere. Identity operations will go through
-- SECURITY DEFINER functions; until then only the owner touches these tables.
REVOKE ALL ON orgbase.users, orgbase.sessions, orgbase.organizations, orgbase.members,
              orgbase.app_permissions, orgbase.tenant_tables
    FROM orgbase_runtime;

-- The built-in notes app (SPEC R9).
CREATE TABLE orgbase.notes (
    title text NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    body text NOT NULL DEFAULT '' CHECK (length(body) <= 100000),
    tags text[] NOT NULL DEFAULT '{}'
);
SELECT orgbase.make_tenant_table('orgbase.notes', 'notes');
ALTER TABLE orgbase.notes
    ADD FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id);
