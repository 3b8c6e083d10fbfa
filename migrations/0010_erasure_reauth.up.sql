-- A person's own erasure needs their password again (and their TOTP code when enrolled), and
-- can be cancelled by them during the grace period.
--
-- Asking for erasure ends every session at the worker's next pass, so a stolen session token
-- must not be enough to ask for it: the server checks the password first and then calls
-- `gdpr_erase_self` with a server proof, which only it can make. `gdpr_request_self` no longer
-- opens erasures.
--
-- Cancelling: the person has no session any more, so `gdpr_cancel_self` is reached through
-- email + password (the server looks the account up with `erasure_lookup`, checks the password,
-- and proves it). It marks the request `cancelled` and gives the account back at once; the
-- worker puts the soft-deleted rows back at its next pass (it alone may write every
-- organization's rows), and sessions stay ended: the person signs in again.

-- When the erasure soft-deleted the person's rows (one transaction, so one timestamp on every
-- row it touched): what a cancellation puts back. NULL while nothing is soft-deleted, and
-- again once a cancellation's rows are back.
ALTER TABLE orgbase.gdpr_requests ADD COLUMN soft_deleted_at timestamptz;

-- Requests soft-deleted by an earlier orgbase: the same transaction stamped the account (the
-- person's request) or the membership (an admin's).
UPDATE orgbase.gdpr_requests g SET soft_deleted_at = u.deleted_at
  FROM orgbase.users u
 WHERE g.kind = 'erase' AND g.status = 'pending' AND g.org_id IS NULL
   AND u.id = g.subject AND u.deleted_at IS NOT NULL;
UPDATE orgbase.gdpr_requests g SET soft_deleted_at = m.deleted_at
  FROM orgbase.members m
 WHERE g.kind = 'erase' AND g.status = 'pending' AND g.org_id IS NOT NULL
   AND m.org_id = g.org_id AND m.user_id = g.subject AND m.deleted_at IS NOT NULL;

-- Exports only, by session.
CREATE OR REPLACE FUNCTION orgbase.gdpr_request_self(cred_hash bytea, kind text, grace interval)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    s record;
BEGIN
    IF kind = 'erase' THEN
        RAISE EXCEPTION 'erasing an account needs its password: use gdpr_erase_self'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_bad_proof';
    END IF;
    SELECT * INTO s FROM orgbase.session_of(cred_hash);
    PERFORM orgbase.audit_event(s.user_id, 'gdpr.' || kind || '.request', '{}', NULL, NULL);
    RETURN orgbase.gdpr_open(kind, s.user_id, NULL, s.user_id, grace);
END
$$;

-- What re-authentication checks for the session's account: its password hash and TOTP state,
-- and the blind index of its email (login throttling is per account).
CREATE FUNCTION orgbase.reauth_lookup(cred_hash bytea, issued_at bigint, proof bytea)
RETURNS TABLE (user_id uuid, email_hash bytea, password_hash text, totp_enabled boolean, totp_secret bytea)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    s record;
BEGIN
    PERFORM orgbase.require_proof('reauth', encode(reauth_lookup.cred_hash, 'hex'), issued_at, proof);
    SELECT * INTO s FROM orgbase.session_of(reauth_lookup.cred_hash);
    RETURN QUERY
    SELECT u.id, u.email_hash, u.password_hash, u.totp_enabled, u.totp_secret
      FROM orgbase.users u WHERE u.id = s.user_id;
END
$$;
REVOKE ALL ON FUNCTION orgbase.reauth_lookup(bytea, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.reauth_lookup(bytea, bigint, bytea) TO orgbase_runtime;

-- The person's own erasure, after the server checked their password (the proof binds the
-- session's credential).
CREATE FUNCTION orgbase.gdpr_erase_self(cred_hash bytea, grace interval, issued_at bigint, proof bytea)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    s record;
BEGIN
    PERFORM orgbase.require_proof('erase', encode(gdpr_erase_self.cred_hash, 'hex'), issued_at, proof);
    SELECT * INTO s FROM orgbase.session_of(gdpr_erase_self.cred_hash);
    PERFORM orgbase.audit_event(s.user_id, 'gdpr.erase.request', '{}', NULL, NULL);
    RETURN orgbase.gdpr_open('erase', s.user_id, NULL, s.user_id, grace);
END
$$;
REVOKE ALL ON FUNCTION orgbase.gdpr_erase_self(bytea, interval, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.gdpr_erase_self(bytea, interval, bigint, bytea) TO orgbase_runtime;

-- The account behind an email with an open erasure of its own (requested or in its grace
-- period): what cancelling checks. Accounts without one answer nothing, as unknown emails do.
CREATE FUNCTION orgbase.erasure_lookup(email_hash bytea, issued_at bigint, proof bytea)
RETURNS TABLE (user_id uuid, password_hash text, totp_enabled boolean, totp_secret bytea)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    PERFORM orgbase.require_proof('erasure-lookup', encode(erasure_lookup.email_hash, 'hex'), issued_at, proof);
    RETURN QUERY
    SELECT u.id, u.password_hash, u.totp_enabled, u.totp_secret
      FROM orgbase.users u
     WHERE u.email_hash = erasure_lookup.email_hash
       AND EXISTS (SELECT 1 FROM orgbase.gdpr_requests g
                    WHERE g.kind = 'erase' AND g.subject = u.id AND g.org_id IS NULL
                      AND g.status IN ('requested', 'pending'));
END
$$;
REVOKE ALL ON FUNCTION orgbase.erasure_lookup(bytea, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.erasure_lookup(bytea, bigint, bytea) TO orgbase_runtime;

-- Cancel the person's open erasure (after the server checked their password). The request row
-- is locked first, as the worker locks it before each step: either the worker's step comes
-- first (and this sees its result) or this does (and the worker sees `cancelled` and stops).
CREATE FUNCTION orgbase.gdpr_cancel_self(subject uuid, issued_at bigint, proof bytea)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    r orgbase.gdpr_requests;
BEGIN
    PERFORM orgbase.require_proof('erase-cancel', gdpr_cancel_self.subject::text, issued_at, proof);
    SELECT * INTO r FROM orgbase.gdpr_requests g
     WHERE g.kind = 'erase' AND g.subject = gdpr_cancel_self.subject AND g.org_id IS NULL
       AND g.status IN ('requested', 'pending')
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'this account has no erasure to cancel'
            USING ERRCODE = 'no_data_found', HINT = 'orgbase_not_found';
    END IF;
    -- The worker's last step anonymizes the account (no password any more) before it marks the
    -- request done: past that point there is nothing left to give back.
    IF NOT EXISTS (SELECT 1 FROM orgbase.users u
                    WHERE u.id = r.subject AND u.password_hash IS NOT NULL) THEN
        RAISE EXCEPTION 'this erasure is being carried out and can no longer be cancelled'
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'orgbase_erasure_underway';
    END IF;
    UPDATE orgbase.gdpr_requests SET status = 'cancelled', completed_at = now(), error = NULL
     WHERE id = r.id
    RETURNING * INTO r;
    -- The account comes back only if this erasure is what closed it.
    IF r.soft_deleted_at IS NOT NULL THEN
        UPDATE orgbase.users SET status = 'active', deleted_at = NULL
         WHERE id = r.subject AND deleted_at = r.soft_deleted_at;
    END IF;
    PERFORM orgbase.audit_event(r.subject, 'gdpr.erase.cancel',
                                jsonb_build_object('request', r.id), NULL, NULL);
    RETURN orgbase.gdpr_json(r);
END
$$;
REVOKE ALL ON FUNCTION orgbase.gdpr_cancel_self(uuid, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.gdpr_cancel_self(uuid, bigint, bytea) TO orgbase_runtime;
