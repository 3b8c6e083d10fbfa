-- Undo 0003: the request path, the tenant-table catalog, the context checks and the
-- connection's MAC key.
DROP FUNCTION orgbase.begin_request(bytea, text, inet, text, text);
DROP FUNCTION orgbase.authenticate_request(bytea, text, inet, text, text);
DROP FUNCTION orgbase.org_of_ref(text);
DROP FUNCTION orgbase.member_app_roles(uuid, uuid);
DROP TABLE orgbase.tenant_tables;
DROP FUNCTION orgbase.ctx_allows(uuid, uuid, text, text);
DROP FUNCTION orgbase.ctx_mac(text, text, text, text, text);
DROP FUNCTION orgbase.ctx_mac(text, text, text, text);
DROP FUNCTION orgbase.ctx_owner(text, int);
DROP FUNCTION orgbase.ctx_app_level(text);
DROP FUNCTION orgbase.ctx_user_if_any();
DROP FUNCTION orgbase.ctx_is_admin();
DROP FUNCTION orgbase.ctx_org_role();
DROP FUNCTION orgbase.ctx_user();
DROP FUNCTION orgbase.ctx_org();
DROP FUNCTION orgbase.ctx_check(text);
DROP FUNCTION orgbase.ctx();
DROP FUNCTION orgbase.set_context(uuid, uuid, text, text, text);
DROP FUNCTION orgbase.session_key();
DROP FUNCTION orgbase.session_mac(bytea, text, text, text, text, text);
DROP SEQUENCE orgbase.session_key_b;
DROP SEQUENCE orgbase.session_key_a;
