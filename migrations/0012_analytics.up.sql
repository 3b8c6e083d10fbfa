-- orgbase:run-as admin
-- Anonymized analytics (docs/analytics.md): the `analytics` schema that `orgbase analytics
-- refresh` fills with a k-anonymous copy of every tenant table, the per-column rules that say
-- what of a column goes in, and the privacy-budget ledger of differentially private queries.
--
-- It runs as the administrative user only to create the schema (the owner may not create
-- schemas in this database); everything else is created as the owner.

CREATE SCHEMA analytics AUTHORIZATION orgbase_owner;

SET LOCAL ROLE orgbase_owner;

-- The dataset --------------------------------------------------------------------------------

-- Readable by the read-only analytics role and by backups; closed to the runtime role. The
-- refresh (as the administrator, who reads every organization's rows) replaces its tables and
-- hands them to the owner, so these defaults apply to them.
GRANT USAGE ON SCHEMA analytics TO orgbase_readonly, orgbase_backup;
ALTER DEFAULT PRIVILEGES FOR ROLE orgbase_owner IN SCHEMA analytics
    GRANT SELECT ON TABLES TO orgbase_readonly, orgbase_backup;
COMMENT ON SCHEMA analytics IS
    'orgbase: k-anonymous copies of the tenant tables, rebuilt by `orgbase analytics refresh`';

-- What of a column enters the dataset, beside its class:
--   drop              never (always so for confidential, pii and phi columns)
--   keep              as it is (a category: booleans, IN-list text)
--   month             a date or time truncated to its month
--   range[:width]     a number replaced by its range: [0, width), [width, 2·width), …; without
--                     a width, by its order of magnitude ([10, 100), …)
--   perturb[:f]       a number kept, multiplied by a random factor within 1 ± f (default 0.05);
--                     a measure, not a quasi-identifier
-- Unlisted columns get a rule from their type (docs/analytics.md).
ALTER TABLE orgbase.column_classes
    ADD COLUMN analytics text
        CONSTRAINT column_classes_analytics_rule
        CHECK (analytics ~ '^(drop|keep|month|range(:[0-9]+(\.[0-9]+)?)?|perturb(:0?\.[0-9]+)?)$'),
    ADD CONSTRAINT column_classes_analytics_sensitive
        CHECK (analytics IS NULL OR analytics = 'drop' OR class IN ('public', 'internal'));

--     SELECT orgbase.analytics_rule('app.invoices', 'amount', 'perturb:0.1');
CREATE FUNCTION orgbase.analytics_rule(tbl regclass, col name, rule text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'table % has no column %', tbl, col;
    END IF;
    INSERT INTO orgbase.column_classes (table_name, column_name, class, analytics)
    VALUES (tbl, col, 'internal', rule)
    ON CONFLICT (table_name, column_name) DO UPDATE SET analytics = EXCLUDED.analytics;
END
$$;
REVOKE ALL ON FUNCTION orgbase.analytics_rule(regclass, name, text) FROM PUBLIC;

-- make_tenant_table's classes may say a column's analytics rule too:
--     classes => '{"amount": {"class": "internal", "analytics": "perturb:0.1"}, "phone": "pii"}'
CREATE OR REPLACE FUNCTION orgbase.make_tenant_table(tbl regclass, app text, classes jsonb) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record;
BEGIN
    IF jsonb_typeof(classes) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'classes must be a JSON object {"column": "class"} or {"column": {"class": …, "max_length": …}}';
    END IF;
    PERFORM orgbase.make_tenant_table(tbl, app);
    FOR c IN SELECT key, value FROM jsonb_each(classes) LOOP
        IF jsonb_typeof(c.value) = 'object' THEN
            IF EXISTS (SELECT 1 FROM jsonb_object_keys(c.value) k
                        WHERE k NOT IN ('class', 'min_length', 'max_length', 'analytics')) THEN
                RAISE EXCEPTION 'classes.%: the keys are class, min_length, max_length and analytics', c.key;
            END IF;
            PERFORM orgbase.classify(tbl, c.key::name, coalesce(c.value ->> 'class', 'internal'),
                                     (c.value ->> 'min_length')::int, (c.value ->> 'max_length')::int);
            IF c.value ? 'analytics' THEN
                PERFORM orgbase.analytics_rule(tbl, c.key::name, c.value ->> 'analytics');
            END IF;
        ELSE
            PERFORM orgbase.classify(tbl, c.key::name, c.value #>> '{}');
        END IF;
    END LOOP;
END
$$;

-- One row per table and refresh: what the dataset of that table achieved.
CREATE TABLE orgbase.analytics_refreshes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name text NOT NULL,
    dataset text NOT NULL,
    refreshed_at timestamptz NOT NULL DEFAULT now(),
    source_rows bigint NOT NULL,
    kept_rows bigint NOT NULL,
    suppressed_rows bigint NOT NULL,
    k_required int NOT NULL CHECK (k_required >= 2),
    -- The smallest equivalence class kept (NULL when nothing was kept).
    k_achieved bigint,
    quasi_identifiers text[] NOT NULL,
    columns jsonb NOT NULL
);
CREATE INDEX analytics_refreshes_table ON orgbase.analytics_refreshes (table_name, refreshed_at DESC);
REVOKE ALL ON orgbase.analytics_refreshes FROM orgbase_runtime;

-- The privacy budget ---------------------------------------------------------------------------

-- Instance defaults (one row), written by `orgbase serve` from `[analytics]` at start. All
-- amounts of ε are integers in millionths (micro-ε): accounting never rounds.
CREATE TABLE orgbase.privacy_settings (
    id int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    default_budget_micro bigint NOT NULL DEFAULT 1000000 CHECK (default_budget_micro >= 0),
    default_period text NOT NULL DEFAULT 'none' CHECK (default_period IN ('none', 'day', 'month', 'year')),
    max_query_micro bigint NOT NULL DEFAULT 1000000 CHECK (max_query_micro > 0)
);
INSERT INTO orgbase.privacy_settings DEFAULT VALUES;
REVOKE ALL ON orgbase.privacy_settings FROM orgbase_runtime;

-- An organization's own budget (`orgbase analytics budget --org … --set …`); without a row, the
-- instance default.
CREATE TABLE orgbase.privacy_budgets (
    org_id uuid PRIMARY KEY REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    budget_micro bigint NOT NULL CHECK (budget_micro >= 0),
    period text NOT NULL CHECK (period IN ('none', 'day', 'month', 'year')),
    updated_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON orgbase.privacy_budgets FROM orgbase_runtime;

-- What each organization spent in each period: the row every charge locks and raises.
CREATE TABLE orgbase.privacy_spend (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    period_start timestamptz NOT NULL,
    spent_micro bigint NOT NULL DEFAULT 0 CHECK (spent_micro >= 0),
    PRIMARY KEY (org_id, period_start)
);
REVOKE ALL ON orgbase.privacy_spend FROM orgbase_runtime;

-- One row per answered query, written in the query's own transaction: a query that fails, or a
-- server that dies before it answers, leaves no row and no spend.
CREATE TABLE orgbase.privacy_charges (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    period_start timestamptz NOT NULL,
    micro bigint NOT NULL CHECK (micro > 0),
    actor uuid,
    key_id uuid,
    query jsonb NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, id)
);
CREATE INDEX privacy_charges_at ON orgbase.privacy_charges (org_id, at DESC, id DESC);
REVOKE ALL ON orgbase.privacy_charges FROM orgbase_runtime;
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.privacy_charges
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'id');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.privacy_budgets
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'org_id');

-- The start of the budget period that `at` falls in ('none': one period for ever).
CREATE FUNCTION orgbase.privacy_period_start(period text, at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog
AS $$
    SELECT CASE period WHEN 'none' THEN '1970-01-01 00:00:00+00'::timestamptz
                       ELSE date_trunc(period, at, 'UTC') END
$$;

-- An organization's budget, period and spend in the current period.
CREATE FUNCTION orgbase.privacy_budget_of(org uuid,
    OUT budget_micro bigint, OUT period text, OUT period_start timestamptz, OUT spent_micro bigint,
    OUT max_query_micro bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, orgbase
AS $$
    SELECT coalesce(b.budget_micro, s.default_budget_micro),
           coalesce(b.period, s.default_period),
           orgbase.privacy_period_start(coalesce(b.period, s.default_period), now()),
           coalesce((SELECT sp.spent_micro FROM orgbase.privacy_spend sp
                      WHERE sp.org_id = org
                        AND sp.period_start = orgbase.privacy_period_start(coalesce(b.period, s.default_period), now())), 0),
           s.max_query_micro
      FROM orgbase.privacy_settings s
      LEFT JOIN orgbase.privacy_budgets b ON b.org_id = org
     WHERE s.id = 1
$$;
REVOKE ALL ON FUNCTION orgbase.privacy_budget_of(uuid) FROM PUBLIC;

-- Who may spend the organization's budget, and read it: its owners and admins, and API keys
-- with the `analytics` scope made by one of them. Returns the key id (NULL for a session).
CREATE FUNCTION orgbase.privacy_caller(OUT org_id uuid, OUT user_id uuid, OUT key_id uuid)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record;
    k record;
BEGIN
    SELECT * INTO c FROM orgbase.ctx();
    org_id := c.org_id;
    user_id := c.user_id;
    key_id := (current_setting('orgbase.req', true)::jsonb ->> 'key')::uuid;
    IF key_id IS NULL THEN
        IF c.org_role NOT IN ('owner', 'admin') THEN
            RAISE EXCEPTION 'only the organization''s owners and admins may run analytics queries'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
        END IF;
    ELSE
        SELECT ak.scopes, m.role INTO k
          FROM orgbase.api_keys ak
          JOIN orgbase.members m ON m.org_id = ak.org_id AND m.user_id = ak.user_id
         WHERE ak.org_id = c.org_id AND ak.id = key_id AND m.deleted_at IS NULL;
        IF NOT FOUND OR NOT ('analytics' = ANY (k.scopes)) THEN
            RAISE EXCEPTION 'this API key has no analytics scope'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
        END IF;
        IF k.role NOT IN ('owner', 'admin') THEN
            RAISE EXCEPTION 'this API key was made by a member who is no longer an owner or admin'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
        END IF;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION orgbase.privacy_caller() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.privacy_caller() TO orgbase_runtime;

-- Charge `org` `micro` millionths of ε for `query`, or refuse (`orgbase_budget_exhausted`) when
-- that would take the period's spend over the budget. The spend row is locked until the
-- transaction ends, so concurrent charges are counted one after the other and never overspend.
CREATE FUNCTION orgbase.privacy_charge_for(org uuid, actor uuid, key uuid, micro bigint, query jsonb,
    OUT charge_id uuid, OUT spent_micro bigint, OUT budget_micro bigint, OUT period text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    b record;
BEGIN
    SELECT * INTO b FROM orgbase.privacy_budget_of(org);
    IF micro IS NULL OR micro <= 0 THEN
        RAISE EXCEPTION 'epsilon must be positive'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'orgbase_bad_epsilon';
    END IF;
    IF micro > b.max_query_micro THEN
        RAISE EXCEPTION 'epsilon % is over the largest a single query may spend (%)',
                        micro / 1e6, b.max_query_micro / 1e6
            USING ERRCODE = 'invalid_parameter_value', HINT = 'orgbase_bad_epsilon';
    END IF;
    INSERT INTO orgbase.privacy_spend (org_id, period_start) VALUES (org, b.period_start)
    ON CONFLICT DO NOTHING;
    UPDATE orgbase.privacy_spend sp SET spent_micro = sp.spent_micro + micro
     WHERE sp.org_id = org AND sp.period_start = b.period_start
       AND sp.spent_micro + micro <= b.budget_micro
    RETURNING sp.spent_micro INTO spent_micro;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the privacy budget of this organization is exhausted for this period'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_budget_exhausted';
    END IF;
    INSERT INTO orgbase.privacy_charges (org_id, period_start, micro, actor, key_id, query)
    VALUES (org, b.period_start, micro, actor, key, query)
    RETURNING id INTO charge_id;
    budget_micro := b.budget_micro;
    period := b.period;
END
$$;
REVOKE ALL ON FUNCTION orgbase.privacy_charge_for(uuid, uuid, uuid, bigint, jsonb) FROM PUBLIC;

-- A request's charge: the organization and person of its verified context.
CREATE FUNCTION orgbase.privacy_charge(micro bigint, query jsonb,
    OUT charge_id uuid, OUT spent_micro bigint, OUT budget_micro bigint, OUT period text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record;
    r record;
BEGIN
    SELECT * INTO c FROM orgbase.privacy_caller();
    SELECT * INTO r FROM orgbase.privacy_charge_for(c.org_id, c.user_id, c.key_id, micro, query);
    charge_id := r.charge_id;
    spent_micro := r.spent_micro;
    budget_micro := r.budget_micro;
    period := r.period;
END
$$;
REVOKE ALL ON FUNCTION orgbase.privacy_charge(bigint, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.privacy_charge(bigint, jsonb) TO orgbase_runtime;

-- The context's organization's budget, for GET …/analytics/budget.
CREATE FUNCTION orgbase.privacy_budget(
    OUT budget_micro bigint, OUT period text, OUT period_start timestamptz, OUT spent_micro bigint,
    OUT max_query_micro bigint, OUT charges bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record;
    b record;
BEGIN
    SELECT * INTO c FROM orgbase.privacy_caller();
    SELECT * INTO b FROM orgbase.privacy_budget_of(c.org_id);
    budget_micro := b.budget_micro;
    period := b.period;
    period_start := b.period_start;
    spent_micro := b.spent_micro;
    max_query_micro := b.max_query_micro;
    charges := (SELECT count(*) FROM orgbase.privacy_charges pc
                 WHERE pc.org_id = c.org_id AND pc.period_start = b.period_start);
END
$$;
REVOKE ALL ON FUNCTION orgbase.privacy_budget() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.privacy_budget() TO orgbase_runtime;

-- The context's organization's charges, newest first, for GET …/analytics/charges.
CREATE FUNCTION orgbase.privacy_charges_page(before uuid, lim int)
RETURNS SETOF orgbase.privacy_charges
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record;
BEGIN
    SELECT * INTO c FROM orgbase.privacy_caller();
    RETURN QUERY
        SELECT pc.* FROM orgbase.privacy_charges pc
         WHERE pc.org_id = c.org_id
           AND (before IS NULL OR (pc.at, pc.id) < (SELECT k.at, k.id FROM orgbase.privacy_charges k
                                                      WHERE k.org_id = c.org_id AND k.id = before))
         ORDER BY pc.at DESC, pc.id DESC
         LIMIT least(greatest(lim, 1), 501);
END
$$;
REVOKE ALL ON FUNCTION orgbase.privacy_charges_page(uuid, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.privacy_charges_page(uuid, int) TO orgbase_runtime;

-- The `analytics` API key scope: spending the privacy budget. Like `admin`, only a credential
-- that has it may grant it.
CREATE OR REPLACE FUNCTION orgbase.valid_scopes(scopes text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT bool_and(s IN ('admin', 'analytics') OR s ~ '^(\*|[a-z][a-z0-9_]{0,62}):(read|write|admin)$')
      FROM unnest(scopes) s
$$;

CREATE OR REPLACE FUNCTION orgbase.scopes_cover(have text[], want text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT COALESCE(pg_catalog.bool_and(
               CASE WHEN w IN ('admin', 'analytics') THEN w = ANY (have)
                    ELSE orgbase.scope_level(have, pg_catalog.split_part(w, ':', 1))
                         >= orgbase.scope_level(ARRAY[w], pg_catalog.split_part(w, ':', 1)) END), true)
      FROM pg_catalog.unnest(want) w
$$;
