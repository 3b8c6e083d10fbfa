-- Undo 0006: the built-in apps, column classification and the tenant-table helper. The apps'
-- tables leave the catalog first (a regclass holds no dependency, so a dropped table would
-- leave a dangling entry); their classifications go with them (ON DELETE CASCADE).
DELETE FROM orgbase.tenant_tables
 WHERE table_name IN ('orgbase.tasks'::regclass, 'orgbase.projects'::regclass, 'orgbase.attachments'::regclass,
                      'orgbase.note_tags'::regclass, 'orgbase.tags'::regclass, 'orgbase.notes'::regclass);
DROP TABLE orgbase.tasks;
DROP TABLE orgbase.projects;
DROP TABLE orgbase.attachments;
DROP TABLE orgbase.note_tags;
DROP TABLE orgbase.tags;
DROP TABLE orgbase.notes;
DROP FUNCTION orgbase.require_active_member();
DROP FUNCTION orgbase.session_mfa(bytea);
DROP FUNCTION orgbase.make_tenant_table(regclass, text, jsonb);
DROP FUNCTION orgbase.classify(regclass, name, text, int, int);
DROP FUNCTION orgbase.classify(regclass, name, text);
DROP TABLE orgbase.column_classes;
DROP FUNCTION orgbase.make_tenant_table(regclass, text, boolean);
DROP FUNCTION orgbase.tenant_policies(regclass, text, boolean);
DROP FUNCTION orgbase.touch_row();
