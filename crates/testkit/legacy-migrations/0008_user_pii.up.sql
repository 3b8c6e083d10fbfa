-- Account pii encrypted by the server (SPEC R14, R16; docs/keys.md, docs/erasure.md).
--
-- orgbase.users.email and .name, and orgbase.invitations.email, are pii of the built-in tables.
-- The server now stores them encrypted ("enc:v1:…"): an account's under the person's account
-- key, an invitation's under a key of its own; erasing the person destroys both. Accounts are found
-- by `email_hash`, a blind index: HMAC-SHA256 of the lower-case email under a key kept with the
-- other keys, outside the database and its backups. The database cannot compute it, so rows
-- written before this migration get theirs from the server (orgbase_db::account::backfill, run by
-- `orgbase serve` and `orgbase migrate up`): the NOT NULL rule is a NOT VALID check, enforced on
-- every row written from now on.

ALTER TABLE orgbase.users
    ADD COLUMN email_hash bytea CHECK (length(email_hash) = 32),
    ADD CONSTRAINT users_email_hash_present CHECK (email_hash IS NOT NULL) NOT VALID,
    DROP CONSTRAINT users_email_check,
    ADD CONSTRAINT users_email_check CHECK (email LIKE 'enc:v1:%'
        OR (email = lower(email) AND length(email) BETWEEN 3 AND 320 AND position('@' IN email) > 1)),
    DROP CONSTRAINT users_name_check,
    ADD CONSTRAINT users_name_check CHECK (name LIKE 'enc:v1:%' OR length(name) <= 200);
CREATE UNIQUE INDEX users_email_hash_key ON orgbase.users (email_hash);
-- Ciphertexts are unique anyway; uniqueness of the address is the blind index's.
DROP INDEX orgbase.users_email_key;
COMMENT ON COLUMN orgbase.users.email IS
    'pii: ciphertext under the account key (plaintext when field encryption is off); look up by email_hash';
COMMENT ON COLUMN orgbase.users.name IS 'pii: ciphertext under the account key (plaintext when field encryption is off)';
COMMENT ON COLUMN orgbase.users.email_hash IS 'blind index: HMAC-SHA256 of lower(email) under the server''s blind-index key';

ALTER TABLE orgbase.invitations
    ADD COLUMN email_hash bytea CHECK (length(email_hash) = 32),
    ADD CONSTRAINT invitations_email_hash_present CHECK (email_hash IS NOT NULL) NOT VALID,
    DROP CONSTRAINT invitations_email_check,
    ADD CONSTRAINT invitations_email_check CHECK (email LIKE 'enc:v1:%'
        OR (email = lower(email) AND position('@' IN email) > 1 AND length(email) <= 320));
COMMENT ON COLUMN orgbase.invitations.email IS
    'pii: ciphertext under the invitation''s key (plaintext when field encryption is off)';
GRANT INSERT (email_hash) ON orgbase.invitations TO orgbase_runtime;

-- The blind index stays out of the audit trail (like password hashes): an entry about an
-- erased person keeps no value that could confirm a guessed email.
DROP TRIGGER audit_row ON orgbase.users;
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.users
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('', 'id', 'password_hash,totp_secret,email_hash');
DROP TRIGGER audit_row ON orgbase.invitations;
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.invitations
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'id', 'token_hash,email_hash');

-- Account functions: by blind index --------------------------------------------------------

DROP FUNCTION orgbase.signup(uuid, text, text, text);
CREATE FUNCTION orgbase.signup(id uuid, email_hash bytea, email text, name text, password_hash text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    INSERT INTO orgbase.users (id, email_hash, email, name, password_hash)
    VALUES (signup.id, signup.email_hash, signup.email, signup.name, signup.password_hash);
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'an account with this email already exists'
        USING ERRCODE = 'unique_violation', HINT = 'orgbase_email_taken';
END
$$;
REVOKE ALL ON FUNCTION orgbase.signup(uuid, bytea, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.signup(uuid, bytea, text, text, text) TO orgbase_runtime;

DROP FUNCTION orgbase.login_lookup(text, bigint, bytea);
CREATE FUNCTION orgbase.login_lookup(email_hash bytea, issued_at bigint, proof bytea)
RETURNS TABLE (user_id uuid, password_hash text, status text, totp_enabled boolean, totp_secret bytea)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    PERFORM orgbase.require_proof('login', encode(login_lookup.email_hash, 'hex'), issued_at, proof);
    RETURN QUERY
    SELECT u.id, u.password_hash, u.status, u.totp_enabled, u.totp_secret
      FROM orgbase.users u WHERE u.email_hash = login_lookup.email_hash AND u.deleted_at IS NULL;
END
$$;
REVOKE ALL ON FUNCTION orgbase.login_lookup(bytea, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.login_lookup(bytea, bigint, bytea) TO orgbase_runtime;

-- A failed login names the account when there is one (as actor), else keeps the blind index of
-- the address tried: never the address.
DROP FUNCTION orgbase.login_failed(text, inet, text, bigint, bytea);
CREATE FUNCTION orgbase.login_failed(email_hash bytea, ip inet, user_agent text, issued_at bigint, proof bytea)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    usr uuid;
BEGIN
    PERFORM orgbase.require_proof('login-failed', encode(login_failed.email_hash, 'hex'), issued_at, proof);
    usr := (SELECT u.id FROM orgbase.users u WHERE u.email_hash = login_failed.email_hash);
    PERFORM orgbase.audit_event(usr, 'login.failure',
        CASE WHEN usr IS NULL THEN jsonb_build_object('email_hash', encode(login_failed.email_hash, 'hex'))
             ELSE '{}'::jsonb END,
        ip, user_agent);
END
$$;
REVOKE ALL ON FUNCTION orgbase.login_failed(bytea, inet, text, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.login_failed(bytea, inet, text, bigint, bytea) TO orgbase_runtime;

DROP FUNCTION orgbase.user_id_by_email(text);
-- In an organization context: the user id of an email's blind index, for admins adding members.
CREATE FUNCTION orgbase.user_id_by_email(email_hash bytea) RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF NOT orgbase.ctx_is_admin() THEN
        RAISE EXCEPTION 'only organization owners and admins may look up users'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
    END IF;
    RETURN (SELECT u.id FROM orgbase.users u
             WHERE u.email_hash = user_id_by_email.email_hash AND u.deleted_at IS NULL);
END
$$;
REVOKE ALL ON FUNCTION orgbase.user_id_by_email(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.user_id_by_email(bytea) TO orgbase_runtime;

-- Emails and names come out as stored (ciphertext): the server decrypts and sorts them.
CREATE OR REPLACE FUNCTION orgbase.member_directory()
RETURNS TABLE (user_id uuid, email text, name text, role text, joined_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
    SELECT m.user_id, u.email, u.name, m.role, m.created_at
      FROM orgbase.members m JOIN orgbase.users u ON u.id = m.user_id
     WHERE m.org_id = orgbase.ctx_org() AND m.deleted_at IS NULL
     ORDER BY m.user_id
$$;

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
    IF NOT FOUND OR inv.email_hash IS DISTINCT FROM (SELECT u.email_hash FROM orgbase.users u WHERE u.id = uid) THEN
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

-- TOTP enrolment answers the account id with the stored email, for the server to decrypt (the
-- authenticator app's label).
DROP FUNCTION orgbase.totp_enroll(bytea, bytea);
CREATE FUNCTION orgbase.totp_enroll(token_hash bytea, secret bytea)
RETURNS TABLE (user_id uuid, email text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    uid uuid := (SELECT s.user_id FROM orgbase.session_of(token_hash) s);
    em text;
BEGIN
    UPDATE orgbase.users u SET totp_secret = secret, updated_at = now()
     WHERE u.id = uid AND NOT u.totp_enabled
    RETURNING u.email INTO em;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'multi-factor authentication is already enabled'
            USING ERRCODE = 'unique_violation', HINT = 'orgbase_mfa_enabled';
    END IF;
    PERFORM orgbase.audit_event(uid, 'mfa.enroll', '{}', NULL, NULL);
    user_id := uid;
    email := em;
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION orgbase.totp_enroll(bytea, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.totp_enroll(bytea, bytea) TO orgbase_runtime;
