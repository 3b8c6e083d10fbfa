DELETE FROM orgbase.tenant_tables
 WHERE table_name IN ('orgbase.tasks'::regclass, 'orgbase.projects'::regclass,
                      'orgbase.attachments'::regclass, 'orgbase.note_tags'::regclass,
                      'orgbase.tags'::regclass);
DROP TABLE orgbase.tasks;
DROP TABLE orgbase.projects;
DROP TABLE orgbase.attachments;
DROP TABLE orgbase.note_tags;
DROP TABLE orgbase.tags;
