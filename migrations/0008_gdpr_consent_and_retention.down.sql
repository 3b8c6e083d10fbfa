-- Undo 0008: legal holds, retention policies, consents and GDPR requests.
DROP FUNCTION orgbase.retention_event(uuid, text, text, jsonb);
DROP FUNCTION orgbase.on_legal_hold(uuid, uuid);
DROP TABLE orgbase.legal_holds;
DROP FUNCTION orgbase.legal_hold_guard();
DROP FUNCTION orgbase.retention_keep(uuid, text);
DROP FUNCTION orgbase.retention_default(text, boolean);
DROP TABLE orgbase.retention_policies;
DROP FUNCTION orgbase.retention_touch();
DROP TABLE orgbase.consents;
DROP FUNCTION orgbase.gdpr_requests_in_org(uuid);
DROP FUNCTION orgbase.gdpr_requests_of(bytea, uuid);
DROP FUNCTION orgbase.gdpr_request_member(text, uuid, interval);
DROP FUNCTION orgbase.gdpr_request_self(bytea, text, interval);
DROP FUNCTION orgbase.gdpr_open(text, uuid, uuid, uuid, interval);
DROP FUNCTION orgbase.gdpr_json(orgbase.gdpr_requests);
DROP TABLE orgbase.gdpr_requests;
