//! Names of data keys: a scope (a person or an organization), a uuid, and a version.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// Whose data a data key protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// A person (data subject): their pii; destroying this key erases them everywhere.
    Subject,
    /// An organization: its confidential data; destroyed when the organization is purged.
    Org,
}

impl Scope {
    /// The byte that names the scope inside a ciphertext.
    pub const fn byte(self) -> u8 {
        match self {
            Scope::Subject => 1,
            Scope::Org => 2,
        }
    }

    pub const fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Scope::Subject),
            2 => Some(Scope::Org),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Subject => "subject",
            Scope::Org => "org",
        }
    }
}

/// A data key: `subject:<uuid>` or `org:<uuid>`. All versions of a key share its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId {
    pub scope: Scope,
    pub id: Uuid,
}

impl KeyId {
    pub const fn subject(id: Uuid) -> Self {
        Self {
            scope: Scope::Subject,
            id,
        }
    }

    pub const fn org(id: Uuid) -> Self {
        Self {
            scope: Scope::Org,
            id,
        }
    }

    /// The store's file name for this key (`subject-<uuid>.json`).
    pub(crate) fn file_name(&self) -> String {
        format!("{}-{}.json", self.scope.as_str(), self.id.as_hyphenated())
    }

    pub(crate) fn from_file_name(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".json")?;
        let (scope, id) = stem.split_once('-')?;
        format!("{scope}:{id}").parse().ok()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scope.as_str(), self.id.as_hyphenated())
    }
}

/// Why a key id did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a key id (expected subject:<uuid> or org:<uuid>): {0:?}")]
pub struct KeyIdParseError(pub String);

impl FromStr for KeyId {
    type Err = KeyIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || KeyIdParseError(s.to_string());
        let (scope, id) = s.split_once(':').ok_or_else(err)?;
        let scope = match scope {
            "subject" => Scope::Subject,
            "org" => Scope::Org,
            _ => return Err(err()),
        };
        let id = Uuid::try_parse(id).map_err(|_| err())?;
        Ok(Self { scope, id })
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A key version: 1 for the first key, +1 at each rotation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct KeyVersion(pub u32);

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_text_and_file_name_roundtrip() {
        let k = KeyId::subject(Uuid::new_v4());
        assert_eq!(k.to_string().parse::<KeyId>().unwrap(), k);
        assert_eq!(KeyId::from_file_name(&k.file_name()).unwrap(), k);
        let o = KeyId::org(Uuid::new_v4());
        assert_eq!(KeyId::from_file_name(&o.file_name()).unwrap(), o);
        assert!("person:123".parse::<KeyId>().is_err());
        assert!("org:not-a-uuid".parse::<KeyId>().is_err());
        assert!(KeyId::from_file_name(".lock").is_none());
    }
}
