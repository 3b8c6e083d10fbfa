-- Back to the schema before 0007: no consent records, retention policies or legal holds.
DROP FUNCTION orgbase.retention_event(uuid, text, text, jsonb);
DROP FUNCTION orgbase.on_legal_hold(uuid, uuid);
DROP TABLE orgbase.legal_holds;
DROP FUNCTION orgbase.legal_hold_guard();
DROP FUNCTION orgbase.retention_keep(uuid, text);
DROP FUNCTION orgbase.retention_default(text, boolean);
DROP TABLE orgbase.retention_policies;
DROP FUNCTION orgbase.retention_touch();
DROP TABLE orgbase.consents;
