#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
//! The server's JSON of binary column values (`orgbase_db::json`) against PostgreSQL's own
//! `row_to_json` of the same values, on a request connection, byte for byte: edge values of
//! every type the server renders, and NULLs.

use orgbase_db::json;
use orgbase_testkit::TestDb;

/// Every row of `sql` (a SELECT whose first column is `row_to_json` of the other columns)
/// rendered by the server must equal PostgreSQL's text.
async fn same_as_postgres(client: &tokio_postgres::Client, sql: &str) -> usize {
    let rows = client.query(sql, &[]).await.expect(sql);
    assert!(!rows.is_empty(), "{sql}: no rows");
    for row in &rows {
        let expected: String = row.get(0);
        let mut out = vec![b'{'];
        for (i, col) in row.columns().iter().enumerate().skip(1) {
            if i > 1 {
                out.push(b',');
            }
            out.extend_from_slice(serde_json::to_string(col.name()).unwrap().as_bytes());
            out.push(b':');
            json::write_column(&mut out, row, i).unwrap();
        }
        out.push(b'}');
        assert_eq!(String::from_utf8(out).unwrap(), expected, "{sql}");
    }
    rows.len()
}

#[tokio::test]
async fn binary_values_render_as_row_to_json_does() {
    let db = TestDb::migrated().await;
    let pool = db.pool();
    let client = pool.get().await.unwrap();
    // Request connections run in UTC, whatever the server's default: the timestamps below
    // depend on it.
    let tz: String = client.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(tz, "UTC");

    let scalars = r#"
        SELECT row_to_json(x)::text, x.* FROM (VALUES
          ('6f1e3c2a-9b7d-4c1e-8a2b-0123456789ab'::uuid, 'plain'::text, 'abc'::varchar(10),
           true, (-32768)::smallint, 2147483647, (-9223372036854775808)::bigint,
           '{"a" : [1,2, {"b":null}] }'::json, '{"b": [1, 2], "a": "x\ny", "n": 1.50}'::jsonb),
          (NULL, E'quote " backslash \\ nl \n tab \t cr \r bs \b ff \f ctrl \x01 \x1f del \x7f é 😀 /',
           ''::varchar, false, 0::smallint, -1, 0::bigint, 'null'::json, '[]'::jsonb),
          ('00000000-0000-0000-0000-000000000000', '', NULL, NULL, NULL, NULL, NULL, NULL, NULL)
        ) AS x (id, title, code, done, small, n, big, doc, meta)"#;
    let times = r#"
        SELECT row_to_json(x)::text, x.* FROM (VALUES
          ('2024-02-29'::date, '2026-12-05 07:49:39.71244+00'::timestamptz,
           '2000-01-01 00:00:00.000001'::timestamp),
          ('infinity', 'infinity', 'infinity'),
          ('-infinity', '-infinity', '-infinity'),
          ('0044-03-15 BC', '0044-03-15 12:00:00.5+00 BC', '0001-01-01 00:00:00 BC'),
          ('0001-01-01', '0001-01-01 00:00:00+00', '1999-12-31 23:59:59.999999'),
          ('4714-11-24 BC', '4714-11-24 00:00:00+00 BC', '1901-12-13 20:45:52'),
          ('12345-06-07', '12345-06-07 01:02:03.000001+00', '294276-12-31 23:59:59.999999'),
          ('1970-01-01', '1969-12-31 23:59:59.9+00', '2026-12-05 07:49:39'),
          (NULL, NULL, NULL)
        ) AS x (due, created_at, local_at)"#;
    let arrays = r#"
        SELECT row_to_json(x)::text, x.* FROM (VALUES
          ('{}'::text[], '{}'::varchar[]),
          ('{a,NULL,"b\"c","",é}', '{x,y}'),
          ('{{a,b},{c,NULL}}', '[2:3]={p,q}'),
          (ARRAY[E'new\nline', '\'], NULL),
          ('{{{deep}}}', '{"{}"}')
        ) AS x (tags, labels)"#;
    let mut n = 0;
    for sql in [scalars, times, arrays] {
        n += same_as_postgres(&client, sql).await;
    }
    assert_eq!(n, 17);
}

#[test]
fn only_the_types_it_renders_are_claimed() {
    for t in [
        "uuid",
        "text",
        "character varying(200)",
        "character varying(200)[]",
        "timestamp with time zone",
        "text[]",
        "jsonb",
    ] {
        assert!(json::renders(t), "{t}");
    }
    for t in [
        "numeric",
        "double precision",
        "integer[]",
        "citext",
        "interval",
        "bytea",
    ] {
        assert!(!json::renders(t), "{t}");
    }
}
