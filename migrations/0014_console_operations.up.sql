-- What the console's GDPR and operator pages need: an admin cancels a member's erasure; an
-- operator closes and reopens organizations and sees the schema migrations.
--
-- An organization's owners and admins may cancel the erasure of a member they asked for, during
-- its grace period, as a person may cancel their own.
--
-- The request row is locked first, as the worker locks it before each step: either the worker's
-- step comes first (and this sees its result: past the hard delete the request is `done` and
-- there is nothing left to give back) or this does (and the worker sees `cancelled` and stops).
-- The membership comes back at once, if this erasure is what ended it; the worker's next pass
-- puts back the rows the soft phase deleted (it alone may write them), as it does for a person's
-- own cancellation. Only owners cancel the erasure of an owner.
CREATE FUNCTION orgbase.gdpr_cancel_member(request uuid)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record := orgbase.ctx();
    r orgbase.gdpr_requests;
    target_role text;
BEGIN
    IF c.org_role NOT IN ('owner', 'admin') THEN
        RAISE EXCEPTION 'only owners and admins may cancel the erasure of a member'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
    END IF;
    SELECT * INTO r FROM orgbase.gdpr_requests g
     WHERE g.id = gdpr_cancel_member.request AND g.org_id = c.org_id AND g.kind = 'erase'
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such erasure request in this organization'
            USING ERRCODE = 'no_data_found', HINT = 'orgbase_not_found';
    END IF;
    IF r.status NOT IN ('requested', 'pending') THEN
        RAISE EXCEPTION 'this erasure is % and can no longer be cancelled', r.status
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'orgbase_erasure_underway';
    END IF;
    SELECT m.role INTO target_role FROM orgbase.members m
     WHERE m.org_id = r.org_id AND m.user_id = r.subject;
    IF target_role = 'owner' AND c.org_role <> 'owner' THEN
        RAISE EXCEPTION 'only owners may cancel the erasure of an owner'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
    END IF;
    UPDATE orgbase.gdpr_requests SET status = 'cancelled', completed_at = now(), error = NULL
     WHERE id = r.id
    RETURNING * INTO r;
    IF r.soft_deleted_at IS NOT NULL THEN
        UPDATE orgbase.members SET deleted_at = NULL
         WHERE org_id = r.org_id AND user_id = r.subject AND deleted_at = r.soft_deleted_at;
    END IF;
    PERFORM orgbase.audit_event(c.user_id, 'gdpr.erase.cancel',
                                jsonb_build_object('request', r.id, 'org', r.org_id, 'subject', r.subject),
                                NULL, NULL);
    RETURN orgbase.gdpr_json(r);
END
$$;
REVOKE ALL ON FUNCTION orgbase.gdpr_cancel_member(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.gdpr_cancel_member(uuid) TO orgbase_runtime;

-- Instance operators ---------------------------------------------------------------------------

-- The server checks the operator itself before it answers from outside the database (backups,
-- the key store).
GRANT EXECUTE ON FUNCTION orgbase.operator_of(bytea) TO orgbase_runtime;

-- Close an organization (nobody reaches it any more; its data stays, for retention and erasure
-- to decide) or reopen it. Audited on the account chain with the operator, address and user
-- agent; the change of the organization's row is on its own chain too.
CREATE FUNCTION orgbase.operator_set_org_status(token_hash bytea, org uuid, closed boolean,
                                                ip inet, user_agent text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    op uuid := orgbase.operator_of(token_hash);
    was timestamptz;
BEGIN
    SELECT o.deleted_at INTO was FROM orgbase.organizations o WHERE o.id = org FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such organization' USING ERRCODE = 'no_data_found', HINT = 'orgbase_not_found';
    END IF;
    IF closed AND was IS NULL THEN
        UPDATE orgbase.organizations SET deleted_at = now(), updated_at = now() WHERE id = org;
    ELSIF NOT closed AND was IS NOT NULL THEN
        UPDATE orgbase.organizations SET deleted_at = NULL, updated_at = now() WHERE id = org;
    ELSE
        RETURN jsonb_build_object('id', org, 'closed', closed, 'changed', false);
    END IF;
    PERFORM orgbase.audit_event(op, CASE WHEN closed THEN 'org.close' ELSE 'org.reopen' END,
                                jsonb_build_object('org', org), ip, user_agent);
    RETURN jsonb_build_object('id', org, 'closed', closed, 'changed', true);
END
$$;
REVOKE ALL ON FUNCTION orgbase.operator_set_org_status(bytea, uuid, boolean, inet, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.operator_set_org_status(bytea, uuid, boolean, inet, text) TO orgbase_runtime;

-- The schema migrations applied to this database, newest first.
CREATE FUNCTION orgbase.operator_migrations(token_hash bytea) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    PERFORM orgbase.operator_of(token_hash);
    RETURN coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'version', m.version, 'description', m.description, 'checksum', m.checksum,
                   'applied_at', m.applied_at, 'applied_by', m.applied_by,
                   'duration_ms', m.duration_ms)
                 ORDER BY m.version DESC)
          FROM orgbase.schema_migrations m), '[]');
END
$$;
REVOKE ALL ON FUNCTION orgbase.operator_migrations(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.operator_migrations(bytea) TO orgbase_runtime;

-- An operator's action outside the database (starting a backup), on the account chain.
CREATE FUNCTION orgbase.operator_audit(token_hash bytea, action text, detail jsonb, ip inet,
                                       user_agent text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF action NOT IN ('backup.start') THEN
        RAISE EXCEPTION 'not an operator action: %', action USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM orgbase.audit_event(orgbase.operator_of(token_hash), action, detail, ip, user_agent);
END
$$;
REVOKE ALL ON FUNCTION orgbase.operator_audit(bytea, text, jsonb, inet, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.operator_audit(bytea, text, jsonb, inet, text) TO orgbase_runtime;
