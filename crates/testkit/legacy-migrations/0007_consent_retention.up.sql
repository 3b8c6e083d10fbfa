-- Consent records, retention policies and legal holds (SPEC R19, R20; docs/retention.md).
--
-- All three are organization-scoped identity tables: row-level security keyed on the verified
-- request context (orgbase.ctx_*), enabled but not forced, so that the administrator's
-- retention run and orgbase's SECURITY DEFINER functions see across organizations, exactly like
-- members, teams and api_keys (docs/security.md). Every write is captured by orgbase.audit_row.

-- Consent ------------------------------------------------------------------------------------

-- One row per decision: granting or withdrawing consent for a purpose. History is kept:
-- withdrawing inserts a new row, nothing updates or deletes a row through the API. The current
-- state of (subject, purpose) is its newest row.
CREATE TABLE orgbase.consents (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    subject_id uuid NOT NULL DEFAULT orgbase.ctx_user(),
    purpose text NOT NULL CHECK (purpose ~ '^[a-z][a-z0-9_.:-]{0,99}$'),
    status text NOT NULL CHECK (status IN ('granted', 'withdrawn')),
    at timestamptz NOT NULL DEFAULT now(),
    source text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'ui', 'import')),
    recorded_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, subject_id) REFERENCES orgbase.members (org_id, user_id),
    FOREIGN KEY (org_id, recorded_by) REFERENCES orgbase.members (org_id, user_id)
);
CREATE INDEX consents_subject_idx ON orgbase.consents (org_id, subject_id, purpose, at DESC);

ALTER TABLE orgbase.consents ENABLE ROW LEVEL SECURITY;
-- A member reads their own records; owners and admins read the organization's.
CREATE POLICY consent_read ON orgbase.consents FOR SELECT
    USING (org_id = (SELECT orgbase.ctx_org())
           AND (subject_id = (SELECT orgbase.ctx_user()) OR (SELECT orgbase.ctx_is_admin())));
-- A member records their own decisions; owners and admins may record for any member (imports).
-- recorded_by is always the caller.
CREATE POLICY consent_insert ON orgbase.consents FOR INSERT
    WITH CHECK (org_id = (SELECT orgbase.ctx_org())
                AND recorded_by = (SELECT orgbase.ctx_user())
                AND (subject_id = (SELECT orgbase.ctx_user()) OR (SELECT orgbase.ctx_is_admin())));
REVOKE ALL ON orgbase.consents FROM orgbase_runtime;
GRANT SELECT, INSERT (org_id, id, subject_id, purpose, status, source) ON orgbase.consents
    TO orgbase_runtime;
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.consents
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'id');

-- Retention policies --------------------------------------------------------------------------

-- An organization's own keep period for a data type; without a row the default applies
-- (orgbase.retention_default). What each type means is in docs/retention.md.
CREATE TABLE orgbase.retention_policies (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    data_type text NOT NULL CHECK (data_type IN ('sessions', 'soft_deleted', 'accounts', 'audit',
                                                 'access_log', 'exports', 'backups')),
    keep interval NOT NULL CHECK (keep >= interval '1 hour' AND keep <= interval '100 years'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid DEFAULT orgbase.ctx_user_if_any(),
    PRIMARY KEY (org_id, data_type)
);

CREATE FUNCTION orgbase.retention_touch() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    NEW.updated_at := now();
    NEW.updated_by := orgbase.ctx_user_if_any();
    RETURN NEW;
END
$$;
GRANT EXECUTE ON FUNCTION orgbase.retention_touch() TO orgbase_runtime;
CREATE TRIGGER retention_touch BEFORE INSERT OR UPDATE ON orgbase.retention_policies
    FOR EACH ROW EXECUTE FUNCTION orgbase.retention_touch();

ALTER TABLE orgbase.retention_policies ENABLE ROW LEVEL SECURITY;
CREATE POLICY retention_admin ON orgbase.retention_policies FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));
REVOKE ALL ON orgbase.retention_policies FROM orgbase_runtime;
GRANT SELECT, INSERT (org_id, data_type, keep), UPDATE (keep), DELETE
    ON orgbase.retention_policies TO orgbase_runtime;
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.retention_policies
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'data_type');

-- The defaults (seed 000's retention table, SPEC R10, R13, R20). For audit and access_log they
-- are also the floor: a policy can lengthen them, never shorten them.
CREATE FUNCTION orgbase.retention_default(data_type text, hipaa boolean) RETURNS interval
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE data_type
        WHEN 'sessions' THEN interval '24 hours'
        WHEN 'soft_deleted' THEN interval '90 days'
        WHEN 'accounts' THEN interval '7 years'
        WHEN 'audit' THEN CASE WHEN hipaa THEN interval '6 years' ELSE interval '1 year' END
        WHEN 'access_log' THEN CASE WHEN hipaa THEN interval '6 years' ELSE interval '1 year' END
        WHEN 'exports' THEN interval '7 days'
        WHEN 'backups' THEN interval '1 year'
    END
$$;
GRANT EXECUTE ON FUNCTION orgbase.retention_default(text, boolean) TO orgbase_runtime;

-- The keep period in force for an organization and data type: its policy, or the default; for
-- audit and access_log never less than the default.
CREATE FUNCTION orgbase.retention_keep(org uuid, data_type text) RETURNS interval
LANGUAGE sql STABLE
SET search_path = pg_catalog, orgbase
AS $$
    SELECT CASE WHEN retention_keep.data_type IN ('audit', 'access_log')
                THEN greatest(p.keep, orgbase.retention_default(retention_keep.data_type, h.hipaa))
                ELSE coalesce(p.keep, orgbase.retention_default(retention_keep.data_type, h.hipaa)) END
      FROM (SELECT coalesce((SELECT 'hipaa' = ANY (o.compliance)
                               FROM orgbase.organizations o WHERE o.id = retention_keep.org), false) AS hipaa) h
      LEFT JOIN orgbase.retention_policies p
             ON p.org_id = retention_keep.org AND p.data_type = retention_keep.data_type
$$;
GRANT EXECUTE ON FUNCTION orgbase.retention_keep(uuid, text) TO orgbase_runtime;

-- Legal holds ----------------------------------------------------------------------------------

-- A hold on a whole organization (subject_id NULL) or on one member. While it is not released,
-- retention deletes nothing it covers. Holds are released, never deleted. No ON DELETE CASCADE
-- from organizations: an organization with holds cannot be hard-deleted by accident.
CREATE TABLE orgbase.legal_holds (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id),
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    subject_id uuid,
    reason text NOT NULL CHECK (length(reason) BETWEEN 1 AND 2000),
    placed_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    placed_at timestamptz NOT NULL DEFAULT now(),
    released_by uuid,
    released_at timestamptz,
    PRIMARY KEY (org_id, id),
    CHECK ((released_at IS NULL) = (released_by IS NULL)),
    FOREIGN KEY (org_id, subject_id) REFERENCES orgbase.members (org_id, user_id),
    FOREIGN KEY (org_id, placed_by) REFERENCES orgbase.members (org_id, user_id),
    FOREIGN KEY (org_id, released_by) REFERENCES orgbase.members (org_id, user_id)
);
CREATE INDEX legal_holds_active_idx ON orgbase.legal_holds (org_id, subject_id)
    WHERE released_at IS NULL;

-- A hold is released once; nothing else about it changes.
CREATE FUNCTION orgbase.legal_hold_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF OLD.released_at IS NOT NULL THEN
        RAISE EXCEPTION 'this legal hold is already released'
            USING ERRCODE = 'check_violation', HINT = 'orgbase_hold_released';
    END IF;
    IF (NEW.org_id, NEW.id, NEW.subject_id, NEW.reason, NEW.placed_by, NEW.placed_at)
       IS DISTINCT FROM (OLD.org_id, OLD.id, OLD.subject_id, OLD.reason, OLD.placed_by, OLD.placed_at) THEN
        RAISE EXCEPTION 'a legal hold can only be released'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
    END IF;
    RETURN NEW;
END
$$;
GRANT EXECUTE ON FUNCTION orgbase.legal_hold_guard() TO orgbase_runtime;
CREATE TRIGGER legal_hold_guard BEFORE UPDATE ON orgbase.legal_holds
    FOR EACH ROW EXECUTE FUNCTION orgbase.legal_hold_guard();

ALTER TABLE orgbase.legal_holds ENABLE ROW LEVEL SECURITY;
CREATE POLICY legal_hold_read ON orgbase.legal_holds FOR SELECT
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));
CREATE POLICY legal_hold_place ON orgbase.legal_holds FOR INSERT
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin())
                AND placed_by = (SELECT orgbase.ctx_user()));
CREATE POLICY legal_hold_release ON orgbase.legal_holds FOR UPDATE
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND released_by = (SELECT orgbase.ctx_user()));
REVOKE ALL ON orgbase.legal_holds FROM orgbase_runtime;
GRANT SELECT, INSERT (org_id, id, subject_id, reason), UPDATE (released_at, released_by)
    ON orgbase.legal_holds TO orgbase_runtime;
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.legal_holds
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'id');

-- Is anything of `subject` in `org` under legal hold: a hold on the whole organization, or one on
-- that subject (pass NULL for "the organization as a whole": true only for an org-wide hold)?
-- The contract the erasure flow relies on: a true answer means "delete nothing of this subject in
-- this organization". SECURITY DEFINER so that it answers truthfully whoever asks (a member cannot
-- read legal_holds); inside a request it answers only for the request's own organization.
CREATE FUNCTION orgbase.on_legal_hold(org uuid, subject uuid) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF coalesce(current_setting('orgbase.ctx_mac', true), '') <> ''
       AND org IS DISTINCT FROM orgbase.ctx_org() THEN
        RAISE EXCEPTION 'legal holds of another organization'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
    END IF;
    RETURN EXISTS (SELECT 1 FROM orgbase.legal_holds h
                    WHERE h.org_id = org AND h.released_at IS NULL
                      AND (h.subject_id IS NULL OR h.subject_id = subject));
END
$$;
REVOKE ALL ON FUNCTION orgbase.on_legal_hold(uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.on_legal_hold(uuid, uuid) TO orgbase_runtime;

-- The retention run's own audit entries: what it deleted (or kept because of a hold) in an
-- organization's chain, or the account chain (nil organization) for sessions.
CREATE FUNCTION orgbase.retention_event(org uuid, action text, data_type text, detail jsonb)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, orgbase
AS $$
    INSERT INTO orgbase.audit_log (org_id, actor_kind, action, table_name, record_id, new)
    VALUES (org, 'system', action, 'orgbase.retention_policies', data_type, detail)
$$;
REVOKE ALL ON FUNCTION orgbase.retention_event(uuid, text, text, jsonb) FROM PUBLIC;
