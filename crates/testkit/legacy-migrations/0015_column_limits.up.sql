-- Length limits of classified columns, checked by the server on the plaintext.
--
-- PostgreSQL sees only ciphertext in an encrypted column, so a CHECK on its length says nothing
-- about the value (the built-in ones accept any `enc:v1:` text). The limits are declared with
-- the classification instead, and the server refuses a value outside them (422 naming the
-- field) before it encrypts anything; the OpenAPI document states them. A product's own table
-- declares them the same way:
--     SELECT orgbase.make_tenant_table('app.patients', 'clinic',
--         classes => '{"diagnosis": {"class": "phi", "max_length": 2000}, "phone": "pii"}');
-- Lengths count characters, as PostgreSQL's length() does.
ALTER TABLE orgbase.column_classes
    ADD COLUMN min_length int CHECK (min_length >= 0),
    ADD COLUMN max_length int CHECK (max_length >= 1),
    ADD CONSTRAINT column_classes_length_range CHECK (max_length >= min_length);

--     SELECT orgbase.classify('myschema.patients', 'diagnosis', 'phi', max_length => 2000);
CREATE FUNCTION orgbase.classify(tbl regclass, col name, class text, min_length int, max_length int)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    PERFORM orgbase.classify(tbl, col, class);
    UPDATE orgbase.column_classes cc SET min_length = classify.min_length, max_length = classify.max_length
     WHERE cc.table_name = tbl AND cc.column_name = col;
END
$$;
REVOKE ALL ON FUNCTION orgbase.classify(regclass, name, text, int, int) FROM PUBLIC;

-- The built-in apps' encrypted columns, with the limits their CHECKs state for plaintext.
SELECT orgbase.classify('orgbase.notes', 'title', 'confidential', 1, 500);
SELECT orgbase.classify('orgbase.notes', 'body', 'confidential', NULL, 100000);
SELECT orgbase.classify('orgbase.tasks', 'description', 'confidential', NULL, 100000);

-- classes: {"column": "class"} or {"column": {"class": …, "min_length": …, "max_length": …}}.
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
                        WHERE k NOT IN ('class', 'min_length', 'max_length')) THEN
                RAISE EXCEPTION 'classes.%: the keys are class, min_length and max_length', c.key;
            END IF;
            PERFORM orgbase.classify(tbl, c.key::name, c.value ->> 'class',
                                     (c.value ->> 'min_length')::int, (c.value ->> 'max_length')::int);
        ELSE
            PERFORM orgbase.classify(tbl, c.key::name, c.value #>> '{}');
        END IF;
    END LOOP;
END
$$;
