-- Back to the schema before 0008: emails and names in clear, looked up by themselves. Refused
-- while any is encrypted: the database cannot decrypt them (turn field encryption off and
-- decrypt them with a server of this version first).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM orgbase.users WHERE email LIKE 'enc:v1:%' OR name LIKE 'enc:v1:%')
       OR EXISTS (SELECT 1 FROM orgbase.invitations WHERE email LIKE 'enc:v1:%') THEN
        RAISE EXCEPTION 'migration 0008 down: accounts or invitations hold encrypted emails or names, which only the server can decrypt';
    END IF;
END
$$;

DROP FUNCTION orgbase.totp_enroll(bytea, bytea);
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
    PERFORM orgbase.audit_event(uid, 'mfa.enroll', '{}', NULL, NULL);
    RETURN em;
END
$$;
REVOKE ALL ON FUNCTION orgbase.totp_enroll(bytea, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.totp_enroll(bytea, bytea) TO orgbase_runtime;

CREATE OR REPLACE FUNCTION orgbase.accept_invitation(token_hash bytea, invitation_hash bytea) RETURNS jsonb
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

CREATE OR REPLACE FUNCTION orgbase.member_directory()
RETURNS TABLE (user_id uuid, email text, name text, role text, joined_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
    SELECT m.user_id, u.email, u.name, m.role, m.created_at
      FROM orgbase.members m JOIN orgbase.users u ON u.id = m.user_id
     WHERE m.org_id = orgbase.ctx_org() AND m.deleted_at IS NULL
     ORDER BY u.email
$$;

DROP FUNCTION orgbase.user_id_by_email(bytea);
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

DROP FUNCTION orgbase.login_failed(bytea, inet, text, bigint, bytea);
CREATE FUNCTION orgbase.login_failed(email text, ip inet, user_agent text, issued_at bigint, proof bytea)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    PERFORM orgbase.require_proof('login-failed', login_failed.email, issued_at, proof);
    PERFORM orgbase.audit_event(
        (SELECT u.id FROM orgbase.users u WHERE u.email = login_failed.email),
        'login.failure', jsonb_build_object('email', login_failed.email), ip, user_agent);
END
$$;
REVOKE ALL ON FUNCTION orgbase.login_failed(text, inet, text, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.login_failed(text, inet, text, bigint, bytea) TO orgbase_runtime;

DROP FUNCTION orgbase.login_lookup(bytea, bigint, bytea);
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

DROP FUNCTION orgbase.signup(uuid, bytea, text, text, text);
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

DROP TRIGGER audit_row ON orgbase.invitations;
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.invitations
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'id', 'token_hash');
DROP TRIGGER audit_row ON orgbase.users;
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.users
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('', 'id', 'password_hash,totp_secret');

REVOKE INSERT (email_hash) ON orgbase.invitations FROM orgbase_runtime;
COMMENT ON COLUMN orgbase.invitations.email IS NULL;
ALTER TABLE orgbase.invitations
    DROP CONSTRAINT invitations_email_check,
    ADD CONSTRAINT invitations_email_check CHECK (email = lower(email) AND position('@' IN email) > 1 AND length(email) <= 320),
    DROP CONSTRAINT invitations_email_hash_present,
    DROP COLUMN email_hash;

COMMENT ON COLUMN orgbase.users.email IS NULL;
COMMENT ON COLUMN orgbase.users.name IS NULL;
CREATE UNIQUE INDEX users_email_key ON orgbase.users (email);
DROP INDEX orgbase.users_email_hash_key;
ALTER TABLE orgbase.users
    DROP CONSTRAINT users_email_check,
    ADD CONSTRAINT users_email_check CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 320 AND position('@' IN email) > 1),
    DROP CONSTRAINT users_name_check,
    ADD CONSTRAINT users_name_check CHECK (length(name) <= 200),
    DROP CONSTRAINT users_email_hash_present,
    DROP COLUMN email_hash;
