//! Validated names: function names, tenant ids, aliases, module digests and version references.
//!
//! Every name a client controls passes through one of these constructors before it reaches a
//! store or a path, so a store key can never be confused with another tenant's or escape a
//! directory.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name does not match `[a-z0-9][a-z0-9-]{0,62}`.
    #[error("invalid {what} {value:?}: must match [a-z0-9][a-z0-9-]{{0,62}}")]
    Invalid { what: &'static str, value: String },
    /// The digest is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid module digest {0:?}: expected \"sha256:\" and 64 lowercase hex digits")]
    Digest(String),
    /// A version reference is neither a number nor an alias name.
    #[error(
        "invalid version reference {0:?}: expected a version number (1 to 999999999, no leading \
         zeros) or an alias"
    )]
    VersionRef(String),
    /// An alias made of digits only, which would read as a version number.
    #[error("invalid alias {0:?}: digits alone name a version; an alias needs a letter or '-'")]
    NumericAlias(String),
}

/// True when `s` matches `[a-z0-9][a-z0-9-]{0,62}`: the one rule for every name.
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Names of every kind follow [`is_valid_name`]; `$extra` may refuse more.
macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        name_type!($(#[$doc])* $ty, $what, |_: &str| -> Result<(), NameError> { Ok(()) });
    };
    ($(#[$doc:meta])* $ty:ident, $what:literal, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Validates and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                if !is_valid_name(&s) {
                    return Err(NameError::Invalid { what: $what, value: s });
                }
                ($extra)(&s)?;
                Ok(Self(s))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A function's name: global, owned by one tenant.
    FunctionName,
    "function name"
);
name_type!(
    /// A tenant: the owner of functions, modules and API keys.
    TenantId,
    "tenant"
);
name_type!(
    /// An alias of a function (`latest`, `prod`, …) pointing at one version. Never digits
    /// alone: `name@12` always means version 12.
    AliasName,
    "alias",
    |s: &str| {
        if s.bytes().all(|c| c.is_ascii_digit()) {
            Err(NameError::NumericAlias(s.to_owned()))
        } else {
            Ok(())
        }
    }
);

/// The content address of an uploaded module: `sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Computes the digest of module bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// Parses a digest given by a client.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let hexpart = s
            .strip_prefix("sha256:")
            .ok_or_else(|| NameError::Digest(s.to_owned()))?;
        if hexpart.len() == 64
            && hexpart
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Digest(s.to_owned()))
        }
    }

    /// The 64 hex digits, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The full `sha256:…` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which version of a function an invocation asks for: `name`, `name@3` or `name@prod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRef {
    /// An exact, immutable version number.
    Number(u32),
    /// An alias, resolved at invocation time (`latest` when none is given).
    Alias(AliasName),
}

impl VersionRef {
    /// The alias every new version moves.
    pub fn latest() -> Self {
        VersionRef::Alias(AliasName::new("latest").expect("valid alias"))
    }

    /// Splits `name[@ref]` into a function name and a version reference.
    pub fn split(target: &str) -> Result<(FunctionName, VersionRef), NameError> {
        match target.split_once('@') {
            None => Ok((FunctionName::new(target)?, VersionRef::latest())),
            Some((name, r)) => Ok((FunctionName::new(name)?, VersionRef::parse(r)?)),
        }
    }

    /// Parses a bare reference: digits are a version number (`[1-9][0-9]{0,8}`), anything
    /// else an alias.
    pub fn parse(r: &str) -> Result<Self, NameError> {
        if !r.is_empty() && r.bytes().all(|c| c.is_ascii_digit()) {
            Some(r)
                .filter(|r| r.len() <= 9 && !r.starts_with('0'))
                .and_then(|r| r.parse::<u32>().ok())
                .map(VersionRef::Number)
                .ok_or_else(|| NameError::VersionRef(r.to_owned()))
        } else {
            AliasName::new(r)
                .map(VersionRef::Alias)
                .map_err(|_| NameError::VersionRef(r.to_owned()))
        }
    }
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionRef::Number(n) => write!(f, "{n}"),
            VersionRef::Alias(a) => write!(f, "{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_follow_the_rule() {
        for ok in ["a", "0", "hello", "a-b-c", "x1-", &"a".repeat(63)] {
            assert!(FunctionName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "a_b",
            "a.b",
            "../x",
            "a/b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(FunctionName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digest_round_trips_and_rejects_junk() {
        let d = Digest::of(b"abc");
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        assert_eq!(d.hex().len(), 64);
        for bad in [
            "sha256:",
            "sha1:00",
            "sha256:../../etc",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_refs_split() {
        let (n, r) = VersionRef::split("hello@3").unwrap();
        assert_eq!((n.as_str(), r), ("hello", VersionRef::Number(3)));
        assert_eq!(VersionRef::split("hello").unwrap().1, VersionRef::latest());
        assert!(
            matches!(VersionRef::split("hello@prod").unwrap().1, VersionRef::Alias(a) if a.as_str() == "prod")
        );
        assert!(VersionRef::split("hello@0").is_err());
        assert!(VersionRef::split("hello@01").is_err());
        assert!(VersionRef::split("hello@1234567890").is_err());
        assert_eq!(
            VersionRef::split("hello@999999999").unwrap().1,
            VersionRef::Number(999_999_999)
        );
        assert!(matches!(
            AliasName::new("123"),
            Err(NameError::NumericAlias(_))
        ));
        assert!(AliasName::new("1a").is_ok() && AliasName::new("1-").is_ok());
        assert!(VersionRef::split("hello@99999999999").is_err());
        assert!(VersionRef::split("hello@").is_err());
        assert!(VersionRef::split("Hello@1").is_err());
    }

    proptest! {
        #[test]
        fn valid_names_never_contain_path_characters(s in "\\PC{0,80}") {
            if let Ok(n) = FunctionName::new(s.clone()) {
                prop_assert!(!n.as_str().contains('/') && !n.as_str().contains('.'));
                prop_assert!(n.as_str().len() <= 63);
            }
        }

        #[test]
        fn every_generated_valid_name_is_accepted(s in "[a-z0-9][a-z0-9-]{0,62}") {
            prop_assert!(FunctionName::new(s).is_ok());
        }
    }
}
