-- A refresh token used twice revokes its whole session family (OAuth 2.0 security best
-- current practice): a rotated token is spent, so its second use means that the token was
-- copied, and whichever of the two parties holds the newer session must sign in again.
--
-- Sessions that come from one login form a family: the login's session and every session a
-- refresh rotated it into. `family` is the id of the login's session (NULL on that session
-- itself: its own id).
ALTER TABLE orgbase.sessions ADD COLUMN family uuid;
CREATE INDEX sessions_family_idx ON orgbase.sessions (family) WHERE family IS NOT NULL;

-- Rotate the session of a refresh token, as before; a token of a session already revoked
-- (rotated or logged out) revokes every live session of its family, is audited as
-- `session.refresh_reuse`, and answers no row (the caller says 401). Nothing is raised, so the
-- revocation commits.
CREATE OR REPLACE FUNCTION orgbase.refresh_session(refresh_hash bytea, new_id uuid, new_token_hash bytea,
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
