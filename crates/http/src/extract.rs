//! Request extractors with problem+json rejections: the bearer credential and JSON bodies.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use orgbase_db::Caller;
use orgbase_db::auth::token_hash;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The caller: `Authorization: Bearer <session token or API key>`, hashed, plus the client
/// address ([`client_ip`]).
#[derive(Debug, Clone)]
pub struct Bearer(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
        let value = values
            .next()
            .ok_or_else(|| ApiError::Unauthorized("send Authorization: Bearer <token>".into()))?;
        // Two credentials: which one counts would depend on who reads the headers.
        if values.next().is_some() {
            return Err(ApiError::BadRequest(
                "send one Authorization header, not several".into(),
            ));
        }
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256 && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header is not `Bearer <token>`".into())
            })?;
        let ip = client_ip_of(parts);
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect());
        Ok(Bearer(Caller {
            cred_hash: token_hash(token),
            ip,
            request_id: parts
                .extensions
                .get::<crate::middleware::RequestId>()
                .map(|r| r.0.clone()),
            user_agent,
            seen: parts
                .extensions
                .get::<crate::access::Seen>()
                .map(|s| s.0.clone()),
        }))
    }
}

/// The client address as the outermost layer worked it out ([`client_ip`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub Option<IpAddr>);

/// The client's address: the peer's, or the forwarded one behind a trusted proxy
/// ([`client_ip`]). `None` when the server was started without connect info.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip_of(parts)))
    }
}

/// Set by `middleware::observe`, the outermost layer of every router `app` builds.
fn client_ip_of(parts: &Parts) -> Option<IpAddr> {
    parts.extensions.get::<ClientAddr>().and_then(|c| c.0)
}

/// Who the client is, from the TCP peer and `X-Forwarded-For`.
///
/// The header is believed only when the peer is one of `trusted` (`server.trusted_proxies`):
/// anyone can send it, so from any other peer it is ignored. Behind trusted proxies the client
/// is the right-most address of the header that is not itself a trusted proxy: each proxy
/// appends the address it received the request from, so entries to the left of that one are
/// whatever the client chose to send. When every entry is a trusted proxy, the left-most is the
/// client. An entry that is not an address stops the walk, and the proxy that forwarded it
/// counts as the client, so a garbled header never yields an address the client made up.
/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, a dual-stack listener's peers) are compared
/// as IPv4.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let mut client = peer?.to_canonical();
    let is_trusted = |ip: &IpAddr| is_trusted_proxy(*ip, trusted);
    if !is_trusted(&client) {
        return Some(client);
    }
    // Several X-Forwarded-For headers are one list, in order (RFC 9110, 5.3).
    let entries: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .collect();
    for entry in entries.iter().rev() {
        let Some(ip) = forwarded_addr(entry.trim()) else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Some(client)
}

/// Whether `ip` is one of the trusted proxies (`server.trusted_proxies`), whose forwarded
/// headers are believed.
pub(crate) fn is_trusted_proxy(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip.to_canonical()))
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// One entry of X-Forwarded-For: an address, optionally with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`).
fn forwarded_addr(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// A JSON body: 415 without a JSON content type, 400 `invalid-json` when it does not parse,
/// 422 `validation` when it has the wrong shape (unknown fields, wrong types, missing fields).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

fn is_json(ct: Option<&HeaderValue>) -> bool {
    ct.and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest(e.body_text())
            }
        })?;
        let value = serde_json::from_slice::<UniqueKeys>(&bytes)
            .map_err(|e| ApiError::InvalidJson(e.to_string()))?
            .0;
        let parsed = serde_json::from_value(value).map_err(|e| {
            let msg = e.to_string();
            let field = msg
                .split('`')
                .nth(1)
                .filter(|_| msg.contains("field"))
                .unwrap_or(crate::error::WHOLE_BODY)
                .to_string();
            ApiError::field(&field, msg)
        })?;
        Ok(JsonBody(parsed))
    }
}

/// A JSON document already rendered (usually by PostgreSQL), with a status.
pub fn json_text(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON document parsed as serde_json's `Value`, except that an object with the same key twice
/// (and a string with a NUL character) is an error: parsers disagree on which of the two counts (serde_json keeps the last, others
/// the first), and a check that read one while the write used the other is how filters are
/// bypassed.
struct UniqueKeys(serde_json::Value);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

/// PostgreSQL's text and jsonb hold no NUL character (`\u0000`): a body with one could not be
/// stored, whatever field it is in.
fn no_nul<E: serde::de::Error>(s: &str) -> Result<(), E> {
    if s.contains('\0') {
        Err(E::custom("a string contains a NUL character (\\u0000)"))
    } else {
        Ok(())
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        no_nul(v)?;
        Ok(v.into())
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        no_nul(&v)?;
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(UniqueKeys(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            no_nul(&key)?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} appears twice in one object"
                )));
            }
            let UniqueKeys(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// 400 naming a query parameter.
pub(crate) fn query_error(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("query parameter `{field}`: {message}"))
}

/// A query string as its (name, value) pairs, refusing one that does not parse and a NUL
/// character anywhere (PostgreSQL's text holds none).
pub(crate) fn query_pairs(raw: Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&raw.unwrap_or_default())
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?;
    match pairs
        .iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        Some((k, _)) => Err(query_error(k, "must not contain a NUL character")),
        None => Ok(pairs),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_and_the_rest_parses_as_serde_json_does() {
        for doc in [
            r#"{"title":"a","title":"b"}"#,
            r#"{"a":{"x":1,"x":2}}"#,
            r#"[{"k":1},{"k":1,"k":1}]"#,
        ] {
            let e = serde_json::from_slice::<UniqueKeys>(doc.as_bytes())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("appears twice"), "{doc}: {e}");
        }
        let doc = r#"{"a":[1,-2,3.5,true,null,"s"],"b":{"c":{}},"n":18446744073709551615}"#;
        let ours = serde_json::from_slice::<UniqueKeys>(doc.as_bytes())
            .ok()
            .map(|u| u.0);
        let theirs = serde_json::from_str::<serde_json::Value>(doc).ok();
        assert_eq!(ours, theirs);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let forged = headers(&["10.1.2.3"]);
        assert_eq!(
            client_ip(Some(ip("192.0.2.7")), &forged, &[]),
            Some(ip("192.0.2.7"))
        );
        let trusted = nets(&["127.0.0.1/32"]);
        assert_eq!(
            client_ip(Some(ip("192.0.2.7")), &forged, &trusted),
            Some(ip("192.0.2.7"))
        );
        assert_eq!(client_ip(None, &forged, &trusted), None);
    }

    #[test]
    fn behind_proxies_the_client_is_the_right_most_untrusted_entry() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let peer = Some(ip("127.0.0.1"));
        // The client sent a made-up entry; the first proxy appended the real address, the
        // second the first proxy's.
        let h = headers(&["203.0.113.9, 198.51.100.4", "10.0.0.5"]);
        assert_eq!(client_ip(peer, &h, &trusted), Some(ip("198.51.100.4")));
        // Ports and brackets as some proxies write them.
        let h = headers(&["[2001:db8::1]:443, 10.0.0.5:8080"]);
        assert_eq!(client_ip(peer, &h, &trusted), Some(ip("2001:db8::1")));
        // Every entry a trusted proxy: the left-most.
        let h = headers(&["10.0.0.9, 10.0.0.5"]);
        assert_eq!(client_ip(peer, &h, &trusted), Some(ip("10.0.0.9")));
        // No header: the proxy itself.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
    }

    #[test]
    fn a_garbled_entry_stops_at_the_proxy_that_forwarded_it() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let peer = Some(ip("127.0.0.1"));
        let h = headers(&["198.51.100.4, unknown, 10.0.0.5"]);
        assert_eq!(client_ip(peer, &h, &trusted), Some(ip("10.0.0.5")));
        let h = headers(&["nonsense"]);
        assert_eq!(client_ip(peer, &h, &trusted), peer);
    }

    #[test]
    fn ipv4_mapped_addresses_compare_as_ipv4() {
        let trusted = nets(&["127.0.0.1/32"]);
        let h = headers(&["::ffff:198.51.100.4"]);
        assert_eq!(
            client_ip(Some(ip("::ffff:127.0.0.1")), &h, &trusted),
            Some(ip("198.51.100.4"))
        );
    }
}
