-- Tenant tables: the helper that makes a table one (orgbase.make_tenant_table), the role-matrix
-- policies it installs, column classification; and the built-in apps built with it — notes
-- (with tags and attachment metadata) and projects with tasks.
--
-- A tenant table has org_id, the primary key (org_id, id), the standard columns created_at,
-- updated_at, deleted_at, created_by and updated_by, and row-level security enabled and FORCED
-- (so that even the owner's own queries go through the policies) with one policy per command.
-- docs/security.md ("What must hold", items 4 and 7) is the threat model. Every reference
-- between tenant tables is a composite key over org_id, so that no row points into another
-- organization; a reference to a person is a composite key into members.
--
-- Products make their own tables the same way, from a migration run as the owner:
--     CREATE TABLE app.invoices (amount numeric NOT NULL, customer text NOT NULL);
--     SELECT orgbase.make_tenant_table('app.invoices', 'billing');
-- Foreign keys must exist before make_tenant_table forces row-level security: validating a key
-- added to a forced table would evaluate the policies outside any tenant context. So the
-- built-in tables below declare theirs, and every column in its final order, in CREATE TABLE
-- (the helper adds only the standard columns a table lacks: none here).

-- The helper -------------------------------------------------------------------------------------

-- On every update: stamp updated_at and updated_by, and pin org_id, id and created_* so that a
-- row cannot be moved to another organization or re-attributed.
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

-- The role matrix as four policies:
--   read    same org AND (viewer OR own row)
--   insert  same org AND created_by = updated_by = caller AND editor
--   update  same org AND (editor on a live row OR admin OR own row); the new row may be
--           soft-deleted (deleted_at set) only by an admin or its creator, so restoring, an
--           update of a soft-deleted row, needs what deleting needed
--   delete  same org AND (admin OR own row)
-- Own rows need the key's scope for an API key: reading them read, changing or deleting them
-- write (orgbase.ctx_owner). The context calls are scalar sub-selects, which PostgreSQL
-- evaluates once per statement (an InitPlan) and can use as index keys; the insert check is one
-- row comparison against one ctx_check call (one InitPlan, one verification). Reads use two
-- checks (organization, then level or owner) rather than one row comparison because the planner
-- estimates `org_id = $1 AND (level >= 1 OR created_by = $2)` well and keeps the newest-first
-- index at any organization size (docs/performance.md). Citus forbids sub-selects in policies:
-- with citus => true the policies call the functions directly (once per row).
CREATE FUNCTION orgbase.tenant_policies(tbl regclass, app text, citus boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    o text := CASE WHEN citus THEN 'orgbase.ctx_org()' ELSE '(SELECT orgbase.ctx_org())' END;
    r text := CASE WHEN citus THEN format('orgbase.ctx_owner(%L, 1)', app)
                   ELSE format('(SELECT orgbase.ctx_owner(%L, 1))', app) END;
    w text := CASE WHEN citus THEN format('orgbase.ctx_owner(%L, 2)', app)
                   ELSE format('(SELECT orgbase.ctx_owner(%L, 2))', app) END;
    u text := CASE WHEN citus THEN 'orgbase.ctx_user()' ELSE '(SELECT orgbase.ctx_user())' END;
    l text := CASE WHEN citus THEN format('orgbase.ctx_app_level(%L)', app)
                   ELSE format('(SELECT orgbase.ctx_app_level(%L))', app) END;
    p text;
BEGIN
    FOREACH p IN ARRAY ARRAY['tenant_select', 'tenant_insert', 'tenant_update', 'tenant_delete'] LOOP
        EXECUTE format('DROP POLICY IF EXISTS %I ON %s', p, tbl);
    END LOOP;
    -- The app level comes first: when it suffices, the own-row side is never computed.
    EXECUTE format('CREATE POLICY tenant_select ON %s FOR SELECT USING (org_id = %s AND (%s >= 1 OR created_by = %s))',
                   tbl, o, l, r);
    IF citus THEN
        EXECUTE format('CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK (org_id = %s AND %s >= 2 AND created_by = %s AND updated_by = %s)',
                       tbl, o, l, u, u);
    ELSE
        EXECUTE format('CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK ('
                       '(org_id, created_by, updated_by, true) = '
                       '(SELECT c.org_id, c.user_id, c.user_id, c.level >= 2 FROM orgbase.ctx_check(%L) c))',
                       tbl, app);
    END IF;
    EXECUTE format('CREATE POLICY tenant_update ON %s FOR UPDATE '
                   'USING (org_id = %s AND ((%s >= 2 AND deleted_at IS NULL) OR %s >= 3 OR created_by = %s)) '
                   'WITH CHECK (org_id = %s AND (deleted_at IS NULL OR %s >= 3 OR created_by = %s))',
                   tbl, o, l, l, w, o, l, w);
    EXECUTE format('CREATE POLICY tenant_delete ON %s FOR DELETE USING (org_id = %s AND (%s >= 3 OR created_by = %s))',
                   tbl, o, l, w);
END
$$;
REVOKE ALL ON FUNCTION orgbase.tenant_policies(regclass, text, boolean) FROM PUBLIC;

-- Turn a table into a tenant table. Call it from a migration, as the owner:
--     SELECT orgbase.make_tenant_table('myschema.invoices', 'billing');
-- Adds the standard columns (org_id, id, created_at, updated_at, deleted_at, created_by,
-- updated_by; org_id and the *_by columns default to the request's context) where missing, the
-- primary key (org_id, id) where there is none, forced row-level security with the role-matrix
-- policies, the index for newest-first listing without deleted rows, the updated_at/updated_by
-- trigger and the audit trigger, and registers the table for the generic API under its app.
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
    EXECUTE format('CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row(''org_id'', ''id'')', t);
    INSERT INTO orgbase.tenant_tables (table_name, app) VALUES (tbl, app);
END
$$;
REVOKE ALL ON FUNCTION orgbase.make_tenant_table(regclass, text, boolean) FROM PUBLIC;

-- Column classification ---------------------------------------------------------------------

-- public, internal, confidential, pii, phi; unlisted columns are internal. Values of columns
-- classified confidential, pii or phi are encrypted by the server before they reach PostgreSQL
-- ("enc:v1:…", AES-256-GCM under per-person and per-organization data keys kept outside the
-- database: docs/keys.md), so a CHECK on such a column says nothing about the value; the length
-- limits are declared here instead, checked by the server on the plaintext (422 naming the
-- field) and stated in the OpenAPI document. Lengths count characters, as length() does. Reads
-- of a table with a phi column are logged in read_access_log and need a session that passed MFA.
CREATE TABLE orgbase.column_classes (
    table_name regclass NOT NULL REFERENCES orgbase.tenant_tables (table_name) ON DELETE CASCADE,
    column_name name NOT NULL,
    class text NOT NULL CHECK (class IN ('public', 'internal', 'confidential', 'pii', 'phi')),
    min_length int CHECK (min_length >= 0),
    max_length int CHECK (max_length >= 1),
    PRIMARY KEY (table_name, column_name),
    CONSTRAINT column_classes_length_range CHECK (max_length >= min_length)
);
REVOKE INSERT, UPDATE, DELETE ON orgbase.column_classes FROM orgbase_runtime;

--     SELECT orgbase.classify('myschema.patients', 'diagnosis', 'phi');
CREATE FUNCTION orgbase.classify(tbl regclass, col name, class text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'table % has no column %', tbl, col;
    END IF;
    INSERT INTO orgbase.column_classes (table_name, column_name, class) VALUES (tbl, col, class)
    ON CONFLICT (table_name, column_name) DO UPDATE SET class = EXCLUDED.class;
END
$$;
REVOKE ALL ON FUNCTION orgbase.classify(regclass, name, text) FROM PUBLIC;

--     SELECT orgbase.classify('myschema.patients', 'diagnosis', 'phi', NULL, 2000);
CREATE FUNCTION orgbase.classify(tbl regclass, col name, class text, min_length int, max_length int)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    PERFORM orgbase.classify(tbl, col, class);
    UPDATE orgbase.column_classes cc SET min_length = classify.min_length, max_length = classify.max_length
     WHERE cc.table_name = tbl AND cc.column_name = col;
END
$$;
REVOKE ALL ON FUNCTION orgbase.classify(regclass, name, text, int, int) FROM PUBLIC;

-- A product's own table declares its classes with the tenant-table helper:
--     SELECT orgbase.make_tenant_table('app.patients', 'clinic',
--         classes => '{"diagnosis": {"class": "phi", "max_length": 2000}, "phone": "pii"}');
-- classes: {"column": "class"} or {"column": {"class": …, "min_length": …, "max_length": …}}.
CREATE FUNCTION orgbase.make_tenant_table(tbl regclass, app text, classes jsonb) RETURNS void
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
REVOKE ALL ON FUNCTION orgbase.make_tenant_table(regclass, text, jsonb) FROM PUBLIC;

-- PHI needs a session that passed MFA: the server asks before it touches a PHI table. API keys
-- have no MFA and so never read PHI.
CREATE FUNCTION orgbase.session_mfa(cred_hash bytea) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
    SELECT coalesce((SELECT se.mfa_passed FROM orgbase.sessions se
                      WHERE se.token_hash = cred_hash AND se.user_id = orgbase.ctx_user()
                        AND se.revoked_at IS NULL AND se.expires_at > now()), false)
$$;
REVOKE ALL ON FUNCTION orgbase.session_mfa(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.session_mfa(bytea) TO orgbase_runtime;

-- A member reference that must name an active member (the composite foreign key to members
-- is satisfied by a removed member's row too). The columns are the trigger's arguments.
CREATE FUNCTION orgbase.require_active_member() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    col text;
    who uuid;
BEGIN
    FOREACH col IN ARRAY TG_ARGV LOOP
        who := to_jsonb(NEW) ->> col;
        IF who IS NOT NULL
           AND (TG_OP = 'INSERT' OR who IS DISTINCT FROM (to_jsonb(OLD) ->> col)::uuid)
           AND NOT EXISTS (SELECT 1 FROM orgbase.members m
                            WHERE m.org_id = NEW.org_id AND m.user_id = who AND m.deleted_at IS NULL) THEN
            RAISE EXCEPTION 'not an active member of this organization'
                USING ERRCODE = 'foreign_key_violation', COLUMN = col, HINT = 'orgbase_inactive_member';
        END IF;
    END LOOP;
    RETURN NEW;
END
$$;

-- The built-in apps ---------------------------------------------------------------------------
-- The checks on classified columns accept a ciphertext ("enc:v1:…") or a plaintext within the
-- limits (field encryption can be off).

-- Notes (app `notes`).
CREATE TABLE orgbase.notes (
    title text NOT NULL CHECK (title LIKE 'enc:v1:%' OR length(title) BETWEEN 1 AND 500),
    body text NOT NULL DEFAULT '' CHECK (body LIKE 'enc:v1:%' OR length(body) <= 100000),
    tags text[] NOT NULL DEFAULT '{}',
    org_id uuid NOT NULL DEFAULT orgbase.ctx_org(),
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    created_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    updated_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id)
);
SELECT orgbase.make_tenant_table('orgbase.notes', 'notes');

CREATE TABLE orgbase.tags (
    org_id uuid NOT NULL DEFAULT orgbase.ctx_org(),
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    color text CHECK (color ~ '^#[0-9a-f]{6}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    updated_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id)
);
SELECT orgbase.make_tenant_table('orgbase.tags', 'notes');
CREATE UNIQUE INDEX tags_name_key ON orgbase.tags (org_id, name) WHERE deleted_at IS NULL;

CREATE TABLE orgbase.note_tags (
    org_id uuid NOT NULL DEFAULT orgbase.ctx_org(),
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    note_id uuid NOT NULL,
    tag_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    updated_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, note_id) REFERENCES orgbase.notes (org_id, id),
    FOREIGN KEY (org_id, tag_id) REFERENCES orgbase.tags (org_id, id),
    FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id)
);
SELECT orgbase.make_tenant_table('orgbase.note_tags', 'notes');
CREATE UNIQUE INDEX note_tags_pair_key ON orgbase.note_tags (org_id, note_id, tag_id) WHERE deleted_at IS NULL;
CREATE INDEX note_tags_tag_idx ON orgbase.note_tags (org_id, tag_id);

-- Attachment metadata; the content lives in object storage under storage_key.
CREATE TABLE orgbase.attachments (
    org_id uuid NOT NULL DEFAULT orgbase.ctx_org(),
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    note_id uuid NOT NULL,
    filename text NOT NULL CHECK (filename LIKE 'enc:v1:%' OR length(filename) BETWEEN 1 AND 255),
    content_type text NOT NULL DEFAULT 'application/octet-stream' CHECK (length(content_type) <= 255),
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    storage_key text NOT NULL CHECK (length(storage_key) BETWEEN 1 AND 1024),
    sha256 text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    updated_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, note_id) REFERENCES orgbase.notes (org_id, id),
    FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id)
);
SELECT orgbase.make_tenant_table('orgbase.attachments', 'notes');
CREATE INDEX attachments_note_idx ON orgbase.attachments (org_id, note_id);

-- Projects and tasks (app `projects`).
CREATE TABLE orgbase.projects (
    org_id uuid NOT NULL DEFAULT orgbase.ctx_org(),
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 10000),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'archived')),
    settings jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    updated_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id)
);
SELECT orgbase.make_tenant_table('orgbase.projects', 'projects');
CREATE INDEX projects_status_idx ON orgbase.projects (org_id, status) WHERE deleted_at IS NULL;

-- A task's assignee must be an active member of the task's organization.
CREATE TABLE orgbase.tasks (
    org_id uuid NOT NULL DEFAULT orgbase.ctx_org(),
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    project_id uuid NOT NULL,
    title text NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    description text NOT NULL DEFAULT '' CHECK (description LIKE 'enc:v1:%' OR length(description) <= 100000),
    status text NOT NULL DEFAULT 'todo' CHECK (status IN ('todo', 'in_progress', 'review', 'done', 'cancelled')),
    priority text NOT NULL DEFAULT 'medium' CHECK (priority IN ('low', 'medium', 'high', 'urgent')),
    assignee_id uuid,
    due_date date,
    metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    updated_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, project_id) REFERENCES orgbase.projects (org_id, id),
    FOREIGN KEY (org_id, assignee_id) REFERENCES orgbase.members (org_id, user_id),
    FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id)
);
SELECT orgbase.make_tenant_table('orgbase.tasks', 'projects');
CREATE INDEX tasks_project_idx ON orgbase.tasks (org_id, project_id) WHERE deleted_at IS NULL;
CREATE INDEX tasks_status_idx ON orgbase.tasks (org_id, status) WHERE deleted_at IS NULL;
CREATE INDEX tasks_assignee_idx ON orgbase.tasks (org_id, assignee_id) WHERE deleted_at IS NULL;
CREATE INDEX tasks_due_idx ON orgbase.tasks (org_id, due_date) WHERE deleted_at IS NULL;
CREATE TRIGGER tasks_assignee_active BEFORE INSERT OR UPDATE OF assignee_id ON orgbase.tasks
    FOR EACH ROW EXECUTE FUNCTION orgbase.require_active_member('assignee_id');

-- The built-in apps' encrypted columns, with the limits their CHECKs state for plaintext.
SELECT orgbase.classify('orgbase.attachments', 'filename', 'confidential');
SELECT orgbase.classify('orgbase.notes', 'title', 'confidential', 1, 500);
SELECT orgbase.classify('orgbase.notes', 'body', 'confidential', NULL, 100000);
SELECT orgbase.classify('orgbase.tasks', 'description', 'confidential', NULL, 100000);
