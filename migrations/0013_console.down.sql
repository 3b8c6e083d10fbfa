DROP FUNCTION orgbase.signup_invited(uuid, bytea, text, text, text, bytea);
DROP FUNCTION orgbase.operator_set_status(bytea, uuid, text, inet, text);
DROP FUNCTION orgbase.operator_accounts(bytea, uuid, integer);
DROP FUNCTION orgbase.operator_orgs(bytea);
DROP FUNCTION orgbase.is_operator(bytea);
DROP FUNCTION orgbase.operator_of(bytea);
DROP TABLE orgbase.instance_admins;
