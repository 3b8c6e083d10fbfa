//! Rows to JSON in the server, exactly as PostgreSQL's `row_to_json` renders them.
//!
//! A read of a table whose columns all have a type listed in [`renders`] selects the columns
//! themselves, which arrive in PostgreSQL's binary format, and the server writes the JSON.
//! `row_to_json` cost PostgreSQL about 1.3 µs per row (its output functions, a type lookup per
//! column and the JSON escaping), a tenth of the database's work for a page of 20 notes; the
//! same rendering from the binary values is a fraction of that in the server
//! (docs/performance.md). Tables with other types keep `row_to_json`.
//!
//! The output is byte for byte `row_to_json`'s in a session whose `TimeZone` is UTC, which
//! orgbase sets on every request connection (`crate::database`): keys in column order, no
//! spaces, strings escaped as PostgreSQL escapes them, timestamps in ISO 8601 with `T`, the
//! fraction without trailing zeros and `+00:00`; `infinity`, years past 9999 and `BC` as
//! PostgreSQL writes them. `tests/json.rs` compares the two on edge values of every type.

use std::io::Write as _;

use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Type};

/// Whether a column of this type (as `format_type` names it in the catalog) can be rendered
/// from its binary value.
pub fn renders(sql_type: &str) -> bool {
    matches!(
        sql_type,
        "uuid"
            | "text"
            | "character varying"
            | "boolean"
            | "smallint"
            | "integer"
            | "bigint"
            | "json"
            | "jsonb"
            | "date"
            | "timestamp with time zone"
            | "timestamp without time zone"
            | "text[]"
            | "character varying[]"
    ) || sql_type.starts_with("character varying(")
}

/// A column's value as sent, or NULL.
struct Raw<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Why a value could not be rendered: a type [`renders`] does not cover (the catalog changed
/// under a running server), or bytes that are not the binary form of their type.
#[derive(Debug, thiserror::Error)]
#[error("column {column}: {reason}")]
pub struct RenderError {
    pub column: String,
    pub reason: String,
}

/// Appends column `i` of `row` to `out` as JSON.
pub fn write_column(out: &mut Vec<u8>, row: &Row, i: usize) -> Result<(), RenderError> {
    let col = &row.columns()[i];
    let fail = |reason: String| RenderError {
        column: col.name().to_owned(),
        reason,
    };
    let Raw(raw) = row.try_get(i).map_err(|e| fail(e.to_string()))?;
    match raw {
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
        Some(raw) => write_value(out, col.type_(), raw).map_err(fail),
    }
}

fn write_value(out: &mut Vec<u8>, ty: &Type, raw: &[u8]) -> Result<(), String> {
    match *ty {
        Type::UUID => {
            let u = uuid::Uuid::from_slice(raw).map_err(|e| e.to_string())?;
            let mut buf = uuid::Uuid::encode_buffer();
            out.push(b'"');
            out.extend_from_slice(u.hyphenated().encode_lower(&mut buf).as_bytes());
            out.push(b'"');
        }
        Type::TEXT | Type::VARCHAR => write_str(out, utf8(raw)?),
        Type::JSON => out.extend_from_slice(utf8(raw)?.as_bytes()),
        // Version byte 1, then the text jsonb_out writes (row_to_json writes the same).
        Type::JSONB => match raw.split_first() {
            Some((1, text)) => out.extend_from_slice(utf8(text)?.as_bytes()),
            _ => return Err("unknown jsonb binary version".into()),
        },
        Type::BOOL => match raw {
            [0] => out.extend_from_slice(b"false"),
            [_] => out.extend_from_slice(b"true"),
            _ => return Err("not a boolean".into()),
        },
        Type::INT2 => write_int(out, i16::from_be_bytes(fixed(raw)?).into()),
        Type::INT4 => write_int(out, i32::from_be_bytes(fixed(raw)?).into()),
        Type::INT8 => write_int(out, i64::from_be_bytes(fixed(raw)?)),
        Type::DATE => {
            out.push(b'"');
            match i32::from_be_bytes(fixed(raw)?) {
                i32::MAX => out.extend_from_slice(b"infinity"),
                i32::MIN => out.extend_from_slice(b"-infinity"),
                days => {
                    let (y, m, d) = j2date(i64::from(days) + POSTGRES_EPOCH_JDATE);
                    write_date(out, y, m, d);
                    if y <= 0 {
                        out.extend_from_slice(b" BC");
                    }
                }
            }
            out.push(b'"');
        }
        Type::TIMESTAMPTZ => write_timestamp(out, i64::from_be_bytes(fixed(raw)?), true),
        Type::TIMESTAMP => write_timestamp(out, i64::from_be_bytes(fixed(raw)?), false),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => write_text_array(out, raw)?,
        ref other => return Err(format!("type {other} is not rendered by the server")),
    }
    Ok(())
}

/// `s` as a JSON string. serde_json escapes exactly what PostgreSQL's `escape_json` does:
/// `"`, `\`, `\b \f \n \r \t`, and other control characters as `\u00xx`.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail, and a str always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn utf8(raw: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(raw).map_err(|_| "not UTF-8".into())
}

fn fixed<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("{} bytes, expected {N}", raw.len()))
}

fn write_int(out: &mut Vec<u8>, v: i64) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{v}");
}

/// Julian day of 2000-01-01, PostgreSQL's epoch for dates and timestamps.
const POSTGRES_EPOCH_JDATE: i64 = 2_451_545;
const USECS_PER_DAY: i64 = 86_400_000_000;

/// PostgreSQL's `j2date`: a Julian day to year (0 is 1 BC, -1 is 2 BC), month, day.
fn j2date(jd: i64) -> (i64, i64, i64) {
    let mut julian = jd + 32044;
    let mut quad = julian / 146_097;
    let extra = (julian - quad * 146_097) * 4 + 3;
    julian += 60 + quad * 3 + extra / 146_097;
    quad = julian / 1461;
    julian -= quad * 1461;
    let mut y = julian * 4 / 1461;
    julian = if y != 0 {
        (julian + 305) % 365
    } else {
        (julian + 306) % 366
    } + 123;
    y += quad * 4;
    let quad = julian * 2141 / 65536;
    let day = julian - 7834 * quad / 256;
    let month = (quad + 10) % 12 + 1;
    (y - 4800, month, day)
}

/// `YYYY-MM-DD`, the year at least four digits, a BC year as its absolute number.
fn write_date(out: &mut Vec<u8>, y: i64, m: i64, d: i64) {
    let year = if y > 0 { y } else { 1 - y };
    if year < 10_000 {
        write_digits(out, year, 4);
    } else {
        write_int(out, year);
    }
    out.push(b'-');
    write_digits(out, m, 2);
    out.push(b'-');
    write_digits(out, d, 2);
}

/// `v` (0 ≤ v < 10^width) in exactly `width` digits. By hand: `write!` was most of the
/// cost of a timestamp.
fn write_digits(out: &mut Vec<u8>, mut v: i64, width: usize) {
    let at = out.len();
    out.resize(at + width, b'0');
    for slot in out[at..].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// A timestamp (microseconds since 2000-01-01, UTC for `timestamptz`) as `row_to_json` writes
/// it in a UTC session.
fn write_timestamp(out: &mut Vec<u8>, us: i64, zone: bool) {
    out.push(b'"');
    match us {
        i64::MAX => out.extend_from_slice(b"infinity"),
        i64::MIN => out.extend_from_slice(b"-infinity"),
        _ => {
            let (days, time) = (us.div_euclid(USECS_PER_DAY), us.rem_euclid(USECS_PER_DAY));
            let (y, m, d) = j2date(days + POSTGRES_EPOCH_JDATE);
            write_date(out, y, m, d);
            let secs = time / 1_000_000;
            let frac = time % 1_000_000;
            out.push(b'T');
            write_digits(out, secs / 3600, 2);
            out.push(b':');
            write_digits(out, secs / 60 % 60, 2);
            out.push(b':');
            write_digits(out, secs % 60, 2);
            if frac != 0 {
                out.push(b'.');
                write_digits(out, frac, 6);
                while out.last() == Some(&b'0') {
                    out.pop();
                }
            }
            if zone {
                out.extend_from_slice(b"+00:00");
            }
            if y <= 0 {
                out.extend_from_slice(b" BC");
            }
        }
    }
    out.push(b'"');
}

/// A `text[]` or `varchar[]` in binary form as nested JSON arrays (`[]` when empty).
fn write_text_array(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), String> {
    let mut r = Reader(raw);
    let ndim = r.i32()?;
    let _has_null = r.i32()?;
    let _elem_type = r.i32()?;
    if ndim == 0 {
        out.extend_from_slice(b"[]");
        return Ok(());
    }
    let ndim = usize::try_from(ndim).map_err(|_| "negative dimension count")?;
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        let len = usize::try_from(r.i32()?).map_err(|_| "negative dimension")?;
        let _lower_bound = r.i32()?;
        dims.push(len);
    }
    write_dim(out, &mut r, &dims)?;
    if !r.0.is_empty() {
        return Err("bytes after the last array element".into());
    }
    Ok(())
}

fn write_dim(out: &mut Vec<u8>, r: &mut Reader<'_>, dims: &[usize]) -> Result<(), String> {
    let Some((&len, inner)) = dims.split_first() else {
        return Ok(());
    };
    out.push(b'[');
    for i in 0..len {
        if i > 0 {
            out.push(b',');
        }
        if inner.is_empty() {
            match r.i32()? {
                -1 => out.extend_from_slice(b"null"),
                n => {
                    let n = usize::try_from(n).map_err(|_| "bad element length")?;
                    write_str(out, utf8(r.take(n)?)?);
                }
            }
        } else {
            write_dim(out, r, inner)?;
        }
    }
    out.push(b']');
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("array shorter than its header says".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(fixed(self.take(4)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn julian_days_match_postgres() {
        assert_eq!(j2date(POSTGRES_EPOCH_JDATE), (2000, 1, 1));
        assert_eq!(j2date(POSTGRES_EPOCH_JDATE - 1), (1999, 12, 31));
        assert_eq!(j2date(POSTGRES_EPOCH_JDATE + 59), (2000, 2, 29));
        // Julian day 0 is 4714-11-24 BC, PostgreSQL's first date; year -4713 is 4714 BC.
        assert_eq!(j2date(0), (-4713, 11, 24));
    }

    #[test]
    fn timestamps_trim_the_fraction() {
        let mut out = Vec::new();
        write_timestamp(&mut out, 1_500_000, true);
        assert_eq!(out, b"\"2000-01-01T00:00:01.5+00:00\"");
        out.clear();
        write_timestamp(&mut out, -1, false);
        assert_eq!(out, b"\"1999-12-31T23:59:59.999999\"");
    }
}
