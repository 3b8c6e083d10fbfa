-- Field encryption, export and erasure (SPEC R14–R18, docs/keys.md, docs/erasure.md).
--
-- Values of columns classified confidential, pii or phi are encrypted by the server before they
-- reach PostgreSQL ("enc:v1:…", AES-256-GCM under per-person and per-organization data keys kept
-- outside the database). Checks on those columns now accept a ciphertext; the server checks
-- nothing of the plaintext but the body size limit.
ALTER TABLE orgbase.notes DROP CONSTRAINT notes_title_check,
    ADD CONSTRAINT notes_title_check CHECK (title LIKE 'enc:v1:%' OR length(title) BETWEEN 1 AND 500);
ALTER TABLE orgbase.notes DROP CONSTRAINT notes_body_check,
    ADD CONSTRAINT notes_body_check CHECK (body LIKE 'enc:v1:%' OR length(body) <= 100000);
ALTER TABLE orgbase.attachments DROP CONSTRAINT attachments_filename_check,
    ADD CONSTRAINT attachments_filename_check CHECK (filename LIKE 'enc:v1:%' OR length(filename) BETWEEN 1 AND 255);
ALTER TABLE orgbase.tasks DROP CONSTRAINT tasks_description_check,
    ADD CONSTRAINT tasks_description_check CHECK (description LIKE 'enc:v1:%' OR length(description) <= 100000);

-- A product's own table declares its classes with the tenant-table helper:
--     SELECT orgbase.make_tenant_table('app.patients', 'clinic',
--                                      classes => '{"diagnosis": "phi", "phone": "pii"}');
CREATE FUNCTION orgbase.make_tenant_table(tbl regclass, app text, classes jsonb) RETURNS void
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

-- GDPR requests ---------------------------------------------------------------------------------
-- An export or erasure of one person (`subject`), in one organization (an admin's request) or in
-- all of them (`org_id` NULL: the person's own request). The server's worker (`orgbase erase
-- run`, `orgbase export run`, and the same jobs in `serve`) moves them along as administrator:
--   export: requested → done (archive written, result has its path and SHA-256)
--   erase:  requested → pending (rows soft-deleted, sessions ended) → done at due_at
--           (rows hard-deleted, user anonymized, keys destroyed, certificate in result)
CREATE TABLE orgbase.gdpr_requests (
    id uuid PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('export', 'erase')),
    subject uuid NOT NULL REFERENCES orgbase.users (id),
    org_id uuid REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'requested'
        CHECK (status IN ('requested', 'pending', 'done', 'failed', 'cancelled')),
    requested_by uuid NOT NULL REFERENCES orgbase.users (id),
    requested_at timestamptz NOT NULL DEFAULT now(),
    due_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    result jsonb,
    error text
);
CREATE INDEX gdpr_requests_subject ON orgbase.gdpr_requests (subject, requested_at DESC);
CREATE INDEX gdpr_requests_open ON orgbase.gdpr_requests (due_at) WHERE status IN ('requested', 'pending');
-- One open request of a kind per person and scope.
CREATE UNIQUE INDEX gdpr_requests_one_open ON orgbase.gdpr_requests
    (kind, subject, coalesce(org_id, '00000000-0000-0000-0000-000000000000'))
    WHERE status IN ('requested', 'pending');
REVOKE ALL ON orgbase.gdpr_requests FROM orgbase_runtime;
GRANT SELECT ON orgbase.gdpr_requests TO orgbase_readonly;
-- Every change is on the account chain of the audit trail.
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.gdpr_requests
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('', 'id');

CREATE FUNCTION orgbase.gdpr_json(r orgbase.gdpr_requests) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, orgbase
AS $$
    SELECT jsonb_build_object('id', r.id, 'kind', r.kind, 'subject', r.subject, 'org_id', r.org_id,
                              'status', r.status, 'requested_by', r.requested_by,
                              'requested_at', r.requested_at, 'due_at', r.due_at,
                              'completed_at', r.completed_at, 'result', r.result, 'error', r.error)
$$;

CREATE FUNCTION orgbase.gdpr_open(kind text, subject uuid, org uuid, requested_by uuid, grace interval)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    r orgbase.gdpr_requests;
BEGIN
    IF kind NOT IN ('export', 'erase') THEN
        RAISE EXCEPTION 'kind must be export or erase' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- An organization with other members keeps an owner: erasing its last one waits for a
    -- transfer of ownership.
    IF kind = 'erase' AND EXISTS (
        SELECT 1 FROM orgbase.members m
         WHERE m.user_id = subject AND m.role = 'owner' AND m.deleted_at IS NULL
           AND (org IS NULL OR m.org_id = org)
           AND NOT EXISTS (SELECT 1 FROM orgbase.members o
                            WHERE o.org_id = m.org_id AND o.user_id <> subject
                              AND o.role = 'owner' AND o.deleted_at IS NULL)
           AND EXISTS (SELECT 1 FROM orgbase.members o
                        WHERE o.org_id = m.org_id AND o.user_id <> subject AND o.deleted_at IS NULL)) THEN
        RAISE EXCEPTION 'the person is the last owner of an organization with other members: transfer ownership first'
            USING ERRCODE = 'check_violation', HINT = 'orgbase_last_owner';
    END IF;
    SELECT * INTO r FROM orgbase.gdpr_requests g
     WHERE g.kind = gdpr_open.kind AND g.subject = gdpr_open.subject
       AND g.org_id IS NOT DISTINCT FROM org AND g.status IN ('requested', 'pending');
    IF NOT FOUND THEN
        INSERT INTO orgbase.gdpr_requests (id, kind, subject, org_id, requested_by, due_at)
        VALUES (gen_random_uuid(), kind, subject, org, requested_by,
                now() + CASE WHEN kind = 'erase' THEN grace ELSE interval '0' END)
        RETURNING * INTO r;
    END IF;
    RETURN orgbase.gdpr_json(r);
END
$$;
REVOKE ALL ON FUNCTION orgbase.gdpr_open(text, uuid, uuid, uuid, interval) FROM PUBLIC;

-- A person's own request, for every organization: authenticated by the session itself.
CREATE FUNCTION orgbase.gdpr_request_self(cred_hash bytea, kind text, grace interval)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM orgbase.session_of(cred_hash);
    PERFORM orgbase.audit_event(s.user_id, 'gdpr.' || kind || '.request', '{}', NULL, NULL);
    RETURN orgbase.gdpr_open(kind, s.user_id, NULL, s.user_id, grace);
END
$$;
REVOKE ALL ON FUNCTION orgbase.gdpr_request_self(bytea, text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.gdpr_request_self(bytea, text, interval) TO orgbase_runtime;

-- An organization admin's request about a member, limited to that organization. Only owners
-- act on owners.
CREATE FUNCTION orgbase.gdpr_request_member(kind text, subject uuid, grace interval)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record := orgbase.ctx();
    target_role text;
BEGIN
    IF c.org_role NOT IN ('owner', 'admin') THEN
        RAISE EXCEPTION 'only owners and admins may request an export or erasure of a member'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
    END IF;
    SELECT m.role INTO target_role FROM orgbase.members m
     WHERE m.org_id = c.org_id AND m.user_id = subject;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such member' USING ERRCODE = 'no_data_found', HINT = 'orgbase_not_found';
    END IF;
    IF target_role = 'owner' AND c.org_role <> 'owner' AND kind = 'erase' THEN
        RAISE EXCEPTION 'only owners may erase an owner'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
    END IF;
    RETURN orgbase.gdpr_open(kind, subject, c.org_id, c.user_id, grace);
END
$$;
REVOKE ALL ON FUNCTION orgbase.gdpr_request_member(text, uuid, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.gdpr_request_member(text, uuid, interval) TO orgbase_runtime;

-- Requests the caller may see: their own (by session), or with an organization context those
-- of that organization (admins).
CREATE FUNCTION orgbase.gdpr_requests_of(cred_hash bytea, only_id uuid DEFAULT NULL)
RETURNS SETOF jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM orgbase.session_of(cred_hash);
    RETURN QUERY SELECT orgbase.gdpr_json(g) FROM orgbase.gdpr_requests g
      WHERE (g.subject = s.user_id OR g.requested_by = s.user_id) AND g.org_id IS NULL
        AND (only_id IS NULL OR g.id = only_id)
      ORDER BY g.requested_at DESC LIMIT 100;
END
$$;
REVOKE ALL ON FUNCTION orgbase.gdpr_requests_of(bytea, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.gdpr_requests_of(bytea, uuid) TO orgbase_runtime;

CREATE FUNCTION orgbase.gdpr_requests_in_org(only_id uuid DEFAULT NULL)
RETURNS SETOF jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record := orgbase.ctx();
BEGIN
    IF c.org_role NOT IN ('owner', 'admin') THEN
        RAISE EXCEPTION 'only owners and admins see the organization''s requests'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
    END IF;
    RETURN QUERY SELECT orgbase.gdpr_json(g) FROM orgbase.gdpr_requests g
      WHERE g.org_id = c.org_id AND (only_id IS NULL OR g.id = only_id)
      ORDER BY g.requested_at DESC LIMIT 100;
END
$$;
REVOKE ALL ON FUNCTION orgbase.gdpr_requests_in_org(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.gdpr_requests_in_org(uuid) TO orgbase_runtime;

-- Redaction of personal values in sealed audit entries (erasure): the only change the audit
-- log accepts. `old` and `new` become NULL and `redacted_at` is set; everything the chain covers
-- (including `values_digest`, the digest of the values) stays, so the chain still verifies.
CREATE OR REPLACE FUNCTION orgbase.audit_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND TG_NAME = 'audit_guard'
       AND OLD.redacted_at IS NULL AND NEW.redacted_at IS NOT NULL
       AND OLD.values_digest IS NOT NULL AND NEW.old IS NULL AND NEW.new IS NULL
       AND (NEW.id, NEW.org_id, NEW.at, NEW.actor_kind, NEW.actor_user, NEW.actor_key, NEW.db_role,
            NEW.action, NEW.table_name, NEW.record_id, NEW.ip, NEW.user_agent, NEW.request_id)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.org_id, OLD.at, OLD.actor_kind, OLD.actor_user, OLD.actor_key, OLD.db_role,
            OLD.action, OLD.table_name, OLD.record_id, OLD.ip, OLD.user_agent, OLD.request_id) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only'
        USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_audit_append_only';
END
$$;
