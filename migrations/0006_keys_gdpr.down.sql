-- Back to migration 0005: no GDPR requests, no audit redaction, checks on plaintext only.
CREATE OR REPLACE FUNCTION orgbase.audit_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only'
        USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_audit_append_only';
END
$$;

DROP FUNCTION orgbase.gdpr_requests_in_org(uuid);
DROP FUNCTION orgbase.gdpr_requests_of(bytea, uuid);
DROP FUNCTION orgbase.gdpr_request_member(text, uuid, interval);
DROP FUNCTION orgbase.gdpr_request_self(bytea, text, interval);
DROP FUNCTION orgbase.gdpr_open(text, uuid, uuid, uuid, interval);
DROP FUNCTION orgbase.gdpr_json(orgbase.gdpr_requests);
DROP TABLE orgbase.gdpr_requests;
DROP FUNCTION orgbase.session_mfa(bytea);
DROP FUNCTION orgbase.make_tenant_table(regclass, text, jsonb);

ALTER TABLE orgbase.tasks DROP CONSTRAINT tasks_description_check,
    ADD CONSTRAINT tasks_description_check CHECK (length(description) <= 100000);
ALTER TABLE orgbase.attachments DROP CONSTRAINT attachments_filename_check,
    ADD CONSTRAINT attachments_filename_check CHECK (length(filename) BETWEEN 1 AND 255);
ALTER TABLE orgbase.notes DROP CONSTRAINT notes_body_check,
    ADD CONSTRAINT notes_body_check CHECK (length(body) <= 100000);
ALTER TABLE orgbase.notes DROP CONSTRAINT notes_title_check,
    ADD CONSTRAINT notes_title_check CHECK (length(title) BETWEEN 1 AND 500);
