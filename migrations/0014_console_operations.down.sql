DROP FUNCTION orgbase.operator_audit(bytea, text, jsonb, inet, text);
DROP FUNCTION orgbase.operator_migrations(bytea);
DROP FUNCTION orgbase.operator_set_org_status(bytea, uuid, boolean, inet, text);
REVOKE EXECUTE ON FUNCTION orgbase.operator_of(bytea) FROM orgbase_runtime;
DROP FUNCTION orgbase.gdpr_cancel_member(uuid);
