-- Accounts, sessions and the account functions (sign-up, login, sessions, TOTP).
--
-- Accounts and sessions are closed to the runtime role: SQL that could read a session's token
-- hash could authenticate as anyone, and SQL that could write these tables could mint a
-- session. Everything the server does with them goes through the SECURITY DEFINER functions
-- below, owned by orgbase_owner with a pinned search_path. Those that would let a runtime mint a
-- session or read a password hash or TOTP secret demand a server proof (require_proof): a MAC
-- only the orgbase server can compute. docs/security.md (item 5) is the threat model.
--
-- Emails and names are stored as the server encrypted them ("enc:v1:…", under the person's
-- account key) and accounts are found by email_hash, a blind index the server computes; the
-- database never sees an address at login (docs/keys.md, "Accounts").
--
-- The account functions write account-level audit entries through orgbase.audit_event, which
-- the audit migration creates: PL/pgSQL resolves it when a function first runs, not here.

-- The database's own secret: two independent 512-bit keys for NMAC-SHA256 (HMAC's construction
-- with independent inner and outer keys), built from PostgreSQL's sha256() so that no extension
-- is needed. It keys what must verify on every connection: the server proofs below, request
-- tickets (orgbase.ticket_mac) and, historically, the tenant context MAC (orgbase.ctx_mac).
-- Readable by the owner (and so by the server's administrative connection, which reads it once
-- at start) and by the backup role, never by the runtime or read-only roles. Random per
-- database.
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

-- Accounts. email and name hold ciphertext (or plaintext when field encryption is off, hence
-- the checks that accept either). email_hash is the blind index that makes an address unique.
-- Its presence is a NOT VALID check (below) rather than NOT NULL, because databases from before
-- the blind index had accounts that the server backfills (orgbase_db::account::backfill).
CREATE TABLE orgbase.users (
    id uuid PRIMARY KEY,
    email text NOT NULL CHECK (email LIKE 'enc:v1:%'
        OR (email = lower(email) AND length(email) BETWEEN 3 AND 320 AND position('@' IN email) > 1)),
    name text NOT NULL DEFAULT '' CHECK (name LIKE 'enc:v1:%' OR length(name) <= 200),
    password_hash text,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'suspended', 'pending')),
    totp_secret bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    totp_enabled boolean NOT NULL DEFAULT false,
    email_hash bytea CHECK (length(email_hash) = 32)
);
-- NOT VALID cannot be said in CREATE TABLE (PostgreSQL validates a new table's constraints),
-- hence ALTER TABLE: the check holds for every row written, and the schema is the same as in a
-- database whose accounts predate the blind index.
ALTER TABLE orgbase.users
    ADD CONSTRAINT users_email_hash_present CHECK (email_hash IS NOT NULL) NOT VALID;
-- Ciphertexts are unique anyway; uniqueness of the address is the blind index's.
CREATE UNIQUE INDEX users_email_hash_key ON orgbase.users (email_hash);
COMMENT ON COLUMN orgbase.users.email IS
    'pii: ciphertext under the account key (plaintext when field encryption is off); look up by email_hash';
COMMENT ON COLUMN orgbase.users.name IS 'pii: ciphertext under the account key (plaintext when field encryption is off)';
COMMENT ON COLUMN orgbase.users.email_hash IS 'blind index: HMAC-SHA256 of lower(email) under the server''s blind-index key';

-- Sessions: the server keeps only SHA-256 hashes of the access and refresh tokens. A session
-- ends at expires_at (absolute), after idle_timeout without use, or when revoked. Sessions that
-- come from one login form a family: `family` is the id of the login's session (NULL on that
-- session itself), so that a refresh token used twice can end the whole family.
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
    revoked_at timestamptz,
    family uuid
);
CREATE INDEX sessions_user_idx ON orgbase.sessions (user_id);
CREATE INDEX sessions_family_idx ON orgbase.sessions (family) WHERE family IS NOT NULL;

-- The default privileges give the runtime role DML on every new table; not on these.
REVOKE ALL ON orgbase.users, orgbase.sessions FROM orgbase_runtime;

-- Server proofs ------------------------------------------------------------------------------

-- Raises unless `proof` is the server's NMAC, under orgbase.context_key and domain-separated by
-- 'srv|<purpose>|', over `msg` and a timestamp at most five minutes from now.
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

-- The account of a blind index, with what the server needs to check the password and TOTP.
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

-- A failed login: the server calls this after checking a password (or finding no such user),
-- with a proof, so SQL run as the runtime role cannot fill the log with invented failures. The
-- entry names the account when there is one (as actor), else keeps the blind index of the
-- address tried: never the address.
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

-- A new session after a successful login (the proof covers user, token hashes and MFA state).
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
    PERFORM orgbase.audit_event(create_session.user_id, 'login.success',
        jsonb_build_object('session_id', create_session.id, 'mfa', create_session.mfa_passed),
        ip, user_agent);
    RETURN exp;
END
$$;
REVOKE ALL ON FUNCTION orgbase.create_session(uuid, uuid, bytea, bytea, inet, text, boolean, interval, interval, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.create_session(uuid, uuid, bytea, bytea, inet, text, boolean, interval, interval, bigint, bytea) TO orgbase_runtime;

-- Rotate the session of a refresh token: the old token and refresh token stop working, the
-- absolute expiry stays. A token of a session already revoked (rotated or logged out) means the
-- token was copied: it revokes every live session of its family, is audited as
-- `session.refresh_reuse`, and answers no row (the caller says 401). Nothing is raised then, so
-- the revocation commits (OAuth 2.0 security best current practice).
CREATE FUNCTION orgbase.refresh_session(refresh_hash bytea, new_id uuid, new_token_hash bytea,
                                        new_refresh_hash bytea, ip inet, user_agent text)
RETURNS TABLE (expires_at timestamptz, user_id uuid, mfa_passed boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    s record;
    spent record;
    n int;
BEGIN
    UPDATE orgbase.sessions se SET revoked_at = now()
      FROM orgbase.users us
     WHERE us.id = se.user_id
       AND se.refresh_hash = refresh_session.refresh_hash
       AND se.revoked_at IS NULL AND se.expires_at > now()
       AND us.status = 'active' AND us.deleted_at IS NULL
    RETURNING se.id, se.family, se.user_id, se.mfa_passed, se.idle_timeout, se.expires_at INTO s;
    IF NOT FOUND THEN
        SELECT se.user_id, coalesce(se.family, se.id) AS family INTO spent
          FROM orgbase.sessions se
         WHERE se.refresh_hash = refresh_session.refresh_hash AND se.revoked_at IS NOT NULL;
        IF FOUND THEN
            UPDATE orgbase.sessions se SET revoked_at = now()
             WHERE se.user_id = spent.user_id AND coalesce(se.family, se.id) = spent.family
               AND se.revoked_at IS NULL;
            GET DIAGNOSTICS n = ROW_COUNT;
            PERFORM orgbase.audit_event(spent.user_id, 'session.refresh_reuse',
                jsonb_build_object('family', spent.family, 'revoked', n), ip, user_agent);
            RETURN;
        END IF;
        RAISE EXCEPTION 'invalid or expired refresh token'
            USING ERRCODE = 'invalid_authorization_specification', HINT = 'orgbase_unauthenticated';
    END IF;
    INSERT INTO orgbase.sessions (id, user_id, token_hash, refresh_hash, ip, user_agent,
                                  mfa_passed, idle_timeout, expires_at, family)
    VALUES (new_id, s.user_id, new_token_hash, new_refresh_hash, ip, left(user_agent, 512),
            s.mfa_passed, s.idle_timeout, s.expires_at, coalesce(s.family, s.id));
    PERFORM orgbase.audit_event(s.user_id, 'session.refresh',
        jsonb_build_object('session_id', new_id), ip, user_agent);
    expires_at := s.expires_at;
    user_id := s.user_id;
    mfa_passed := s.mfa_passed;
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION orgbase.refresh_session(bytea, uuid, bytea, bytea, inet, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.refresh_session(bytea, uuid, bytea, bytea, inet, text) TO orgbase_runtime;

CREATE FUNCTION orgbase.logout(token_hash bytea) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    usr uuid;
    sid uuid;
BEGIN
    UPDATE orgbase.sessions SET revoked_at = now()
     WHERE sessions.token_hash = logout.token_hash AND revoked_at IS NULL
    RETURNING user_id, id INTO usr, sid;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM orgbase.audit_event(usr, 'logout', jsonb_build_object('session_id', sid), NULL, NULL);
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION orgbase.logout(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.logout(bytea) TO orgbase_runtime;

-- The caller's account and organizations (email and name as stored: the server decrypts).
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

-- TOTP: the server generates the secret and checks codes; the database keeps the secret.
-- Enrolment answers the account id with the stored email, for the server to decrypt (the
-- authenticator app's label).
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
    PERFORM orgbase.audit_event(s.user_id, 'mfa.verify', jsonb_build_object('session_id', s.session_id), NULL, NULL);
END
$$;
REVOKE ALL ON FUNCTION orgbase.totp_confirm(bytea, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.totp_confirm(bytea, bigint, bytea) TO orgbase_runtime;
