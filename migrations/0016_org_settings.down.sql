-- Back to untyped organization settings (values made true by the up migration stay true).
ALTER TABLE orgbase.organizations DROP CONSTRAINT organizations_settings_types;
