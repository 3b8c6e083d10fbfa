-- Instance operators and invitation-only sign-up (docs/console.md).
--
-- Accounts are equal except for the instance operators listed here: the people who run this
-- orgbase (organizations, accounts, backups, keys), made with `orgbase admin create`. Being an
-- operator gives no access to any organization's rows: the functions below answer what an
-- operator manages (organizations' names and sizes, accounts' states), checked against the
-- caller's session, and nothing of a tenant table.

CREATE TABLE orgbase.instance_admins (
    user_id uuid PRIMARY KEY REFERENCES orgbase.users (id) ON DELETE CASCADE,
    granted_at timestamptz NOT NULL DEFAULT now(),
    -- Who made this operator: `cli` (`orgbase admin create`) or an operator's account id.
    granted_by text NOT NULL CHECK (length(granted_by) BETWEEN 1 AND 64)
);
REVOKE ALL ON orgbase.instance_admins FROM PUBLIC;
COMMENT ON TABLE orgbase.instance_admins IS
    'orgbase: accounts that are instance operators (orgbase admin create)';

-- The operator behind a session token, or an exception (an invalid session as everywhere, a
-- valid one that is not an operator's as insufficient privilege).
CREATE FUNCTION orgbase.operator_of(token_hash bytea) RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    uid uuid := (SELECT s.user_id FROM orgbase.session_of(token_hash) s);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM orgbase.instance_admins a WHERE a.user_id = uid) THEN
        RAISE EXCEPTION 'only instance operators may do this'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_not_operator';
    END IF;
    RETURN uid;
END
$$;
REVOKE ALL ON FUNCTION orgbase.operator_of(bytea) FROM PUBLIC;

-- Whether the session's account is an operator (the console's menu, `GET /v1/me`).
CREATE FUNCTION orgbase.is_operator(token_hash bytea) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
    SELECT EXISTS (SELECT 1 FROM orgbase.instance_admins a
                     JOIN orgbase.session_of(token_hash) s ON s.user_id = a.user_id)
$$;
REVOKE ALL ON FUNCTION orgbase.is_operator(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.is_operator(bytea) TO orgbase_runtime;

-- Every organization, with what an operator needs to run the instance: no tenant row.
CREATE FUNCTION orgbase.operator_orgs(token_hash bytea) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    PERFORM orgbase.operator_of(token_hash);
    RETURN coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'id', o.id, 'slug', o.slug, 'name', o.name, 'region', o.region,
                   'compliance', o.compliance, 'created_at', o.created_at,
                   'closed_at', o.deleted_at,
                   'members', (SELECT count(*) FROM orgbase.members m
                                WHERE m.org_id = o.id AND m.deleted_at IS NULL))
                 ORDER BY o.slug)
          FROM orgbase.organizations o), '[]');
END
$$;
REVOKE ALL ON FUNCTION orgbase.operator_orgs(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.operator_orgs(bytea) TO orgbase_runtime;

-- Every account's state (its email and name stay sealed: the server opens them), newest first,
-- `lim` at a time after `before`.
CREATE FUNCTION orgbase.operator_accounts(token_hash bytea, before uuid, lim integer) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    PERFORM orgbase.operator_of(token_hash);
    RETURN coalesce((
        SELECT jsonb_agg(a ORDER BY a.id DESC)
          FROM (SELECT u.id, u.email, u.name, u.status, u.totp_enabled AS mfa_enabled,
                       u.created_at,
                       EXISTS (SELECT 1 FROM orgbase.instance_admins i WHERE i.user_id = u.id)
                           AS operator
                  FROM orgbase.users u
                 WHERE u.deleted_at IS NULL AND (before IS NULL OR u.id < before)
                 ORDER BY u.id DESC
                 LIMIT least(greatest(lim, 1), 500)) a), '[]');
END
$$;
REVOKE ALL ON FUNCTION orgbase.operator_accounts(bytea, uuid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.operator_accounts(bytea, uuid, integer) TO orgbase_runtime;

-- Suspend (`suspended`) or reactivate (`active`) an account. A suspended account's sessions end
-- at once and it cannot log in; its data and memberships stay. An operator cannot suspend
-- themself (there would be no one left to undo it). Audited.
CREATE FUNCTION orgbase.operator_set_status(token_hash bytea, account uuid, new_status text,
                                            ip inet, user_agent text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    op uuid := orgbase.operator_of(token_hash);
    old text;
BEGIN
    IF new_status NOT IN ('active', 'suspended') THEN
        RAISE EXCEPTION 'status must be active or suspended'
            USING ERRCODE = 'check_violation';
    END IF;
    IF account = op THEN
        RAISE EXCEPTION 'an operator cannot change the state of their own account'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
    END IF;
    SELECT u.status INTO old FROM orgbase.users u
     WHERE u.id = account AND u.deleted_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such account' USING ERRCODE = 'no_data_found', HINT = 'orgbase_not_found';
    END IF;
    IF old NOT IN ('active', 'suspended') THEN
        RAISE EXCEPTION 'the account is %; only active and suspended accounts change here', old
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'orgbase_account_state';
    END IF;
    UPDATE orgbase.users SET status = new_status, updated_at = now() WHERE id = account;
    IF new_status = 'suspended' THEN
        UPDATE orgbase.sessions SET revoked_at = now()
         WHERE user_id = account AND revoked_at IS NULL;
    END IF;
    PERFORM orgbase.audit_event(op, 'account.' || CASE new_status WHEN 'active' THEN 'reactivate'
                                                               ELSE 'suspend' END,
                                jsonb_build_object('account', account, 'from', old),
                                ip, user_agent);
    RETURN jsonb_build_object('id', account, 'status', new_status);
END
$$;
REVOKE ALL ON FUNCTION orgbase.operator_set_status(bytea, uuid, text, inet, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.operator_set_status(bytea, uuid, text, inet, text) TO orgbase_runtime;

-- Sign-up with an invitation (`server.signup = "invite-only"`): the account is created only
-- for the email a pending invitation was sent to, with that invitation's token.
CREATE FUNCTION orgbase.signup_invited(id uuid, email_hash bytea, email text, name text,
                                       password_hash text, invitation_hash bytea)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM orgbase.invitations i
         WHERE i.token_hash = invitation_hash AND i.email_hash = signup_invited.email_hash
           AND i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now()) THEN
        RAISE EXCEPTION 'sign-up is by invitation: send the token of a pending invitation to this email'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_signup_closed';
    END IF;
    PERFORM orgbase.signup(id, email_hash, email, name, password_hash);
END
$$;
REVOKE ALL ON FUNCTION orgbase.signup_invited(uuid, bytea, text, text, text, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.signup_invited(uuid, bytea, text, text, text, bytea) TO orgbase_runtime;
