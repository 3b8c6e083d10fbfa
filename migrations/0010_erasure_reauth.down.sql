DROP FUNCTION orgbase.gdpr_cancel_self(uuid, bigint, bytea);
DROP FUNCTION orgbase.erasure_lookup(bytea, bigint, bytea);
DROP FUNCTION orgbase.gdpr_erase_self(bytea, interval, bigint, bytea);
DROP FUNCTION orgbase.reauth_lookup(bytea, bigint, bytea);

CREATE OR REPLACE FUNCTION orgbase.gdpr_request_self(cred_hash bytea, kind text, grace interval)
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

ALTER TABLE orgbase.gdpr_requests DROP COLUMN soft_deleted_at;
