-- W1 as the seeds' hand-written server does the same work as orgbase's write: create a note in a
-- random org as one of its 5 users, under RLS, the author a member (composite foreign key), the
-- audit entry written by a plpgsql AFTER INSERT trigger in the same transaction. Run as
-- bench_app (see ../reference.sql). Four round trips: BEGIN, context, INSERT ... RETURNING, COMMIT.
\set o random(1, 100)
\set u random(1, 5)
BEGIN;
SELECT set_config('app.org_id', md5('org' || :o)::uuid::text, true),
       set_config('app.user_id', md5('user' || :o || '-' || :u)::uuid::text, true);
INSERT INTO notes_audited (org_id, title, body, created_by, updated_by)
VALUES (md5('org' || :o)::uuid,
        'Quarterly planning notes for the team 01',
        'Agenda for the weekly sync. We reviewed the open items from last week, agreed on owners for the customer onboarding checklist, and moved the billing migration to the next sprint because the vendor contract is still under review. Action items follow. Alice drafts the rollout plan and shares it by Thursday. Bob checks the audit export with the compliance team. Carol updates the retention policy page and links the new erasure workflow. Next meeting on Monday at ten, same room, same agenda. See you.',
        md5('user' || :o || '-' || :u)::uuid, md5('user' || :o || '-' || :u)::uuid)
RETURNING org_id, id, title, body, tags, created_at, updated_at, deleted_at, created_by, updated_by;
COMMIT;
