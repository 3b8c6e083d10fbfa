-- The built-in apps (SPEC R9): notes' tags and attachment metadata, and projects with tasks.
-- Every table is a tenant table (orgbase.make_tenant_table) served by the generic API. Foreign keys
-- are declared before make_tenant_table forces row-level security: validating a key added to a
-- forced table would evaluate the policies outside any tenant context. Every key between tenant
-- tables is composite over org_id; a task's assignee must be a member of the task's organization.

CREATE TABLE orgbase.tags (
    org_id uuid NOT NULL,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_by uuid NOT NULL,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    color text CHECK (color ~ '^#[0-9a-f]{6}$'),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id)
);
SELECT orgbase.make_tenant_table('orgbase.tags', 'notes');
CREATE UNIQUE INDEX tags_name_key ON orgbase.tags (org_id, name) WHERE deleted_at IS NULL;

CREATE TABLE orgbase.note_tags (
    org_id uuid NOT NULL,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_by uuid NOT NULL,
    note_id uuid NOT NULL,
    tag_id uuid NOT NULL,
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, note_id) REFERENCES orgbase.notes (org_id, id),
    FOREIGN KEY (org_id, tag_id) REFERENCES orgbase.tags (org_id, id),
    FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id)
);
SELECT orgbase.make_tenant_table('orgbase.note_tags', 'notes');
CREATE UNIQUE INDEX note_tags_pair_key ON orgbase.note_tags (org_id, note_id, tag_id) WHERE deleted_at IS NULL;
CREATE INDEX note_tags_tag_idx ON orgbase.note_tags (org_id, tag_id);

CREATE TABLE orgbase.attachments (
    org_id uuid NOT NULL,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_by uuid NOT NULL,
    note_id uuid NOT NULL,
    filename text NOT NULL CHECK (length(filename) BETWEEN 1 AND 255),
    content_type text NOT NULL DEFAULT 'application/octet-stream' CHECK (length(content_type) <= 255),
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    storage_key text NOT NULL CHECK (length(storage_key) BETWEEN 1 AND 1024),
    sha256 text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, note_id) REFERENCES orgbase.notes (org_id, id),
    FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id)
);
SELECT orgbase.make_tenant_table('orgbase.attachments', 'notes');
CREATE INDEX attachments_note_idx ON orgbase.attachments (org_id, note_id);

CREATE TABLE orgbase.projects (
    org_id uuid NOT NULL,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_by uuid NOT NULL,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 10000),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'archived')),
    settings jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id)
);
SELECT orgbase.make_tenant_table('orgbase.projects', 'projects');
CREATE INDEX projects_status_idx ON orgbase.projects (org_id, status) WHERE deleted_at IS NULL;

CREATE TABLE orgbase.tasks (
    org_id uuid NOT NULL,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_by uuid NOT NULL,
    project_id uuid NOT NULL,
    title text NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 100000),
    status text NOT NULL DEFAULT 'todo' CHECK (status IN ('todo', 'in_progress', 'review', 'done', 'cancelled')),
    priority text NOT NULL DEFAULT 'medium' CHECK (priority IN ('low', 'medium', 'high', 'urgent')),
    assignee_id uuid,
    due_date date,
    metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, project_id) REFERENCES orgbase.projects (org_id, id),
    FOREIGN KEY (org_id, assignee_id) REFERENCES orgbase.members (org_id, user_id),
    FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id)
);
SELECT orgbase.make_tenant_table('orgbase.tasks', 'projects');
CREATE INDEX tasks_project_idx ON orgbase.tasks (org_id, project_id) WHERE deleted_at IS NULL;
CREATE INDEX tasks_status_idx ON orgbase.tasks (org_id, status) WHERE deleted_at IS NULL;
CREATE INDEX tasks_assignee_idx ON orgbase.tasks (org_id, assignee_id) WHERE deleted_at IS NULL;
CREATE INDEX tasks_due_idx ON orgbase.tasks (org_id, due_date) WHERE deleted_at IS NULL;
