//! GUIDs in JSON as decimal strings: they are 64-bit and exceed 2^53, beyond which JSON
//! numbers lose digits in most readers (`jq`, JavaScript). Reading takes a string or, for files
//! written before, a number.
//!
//! Use with `#[serde(with = "zrep_cli::guid_json")]` on an `Option<u64>` field.

use serde::{Deserialize, Deserializer, Serializer};

/// Writes `Some(guid)` as `"guid"`, `None` as `null`.
pub fn serialize<S: Serializer>(guid: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match guid {
        Some(guid) => serializer.collect_str(guid),
        None => serializer.serialize_none(),
    }
}

/// Reads a decimal string, a number, or `null`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Number(u64),
    }
    match Option::<Written>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Written::Number(guid)) => Ok(Some(guid)),
        Some(Written::Text(text)) => text.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("a GUID is a decimal number, not {text:?}"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        #[serde(with = "super", default)]
        guid: Option<u64>,
    }

    #[test]
    fn large_guids_are_strings_and_both_forms_are_read() {
        let big = Holder {
            guid: Some(17_328_814_923_950_939_117),
        };
        let text = serde_json::to_string(&big).unwrap();
        assert_eq!(text, r#"{"guid":"17328814923950939117"}"#);
        assert_eq!(serde_json::from_str::<Holder>(&text).unwrap(), big);
        let old = r#"{"guid":17328814923950939117}"#;
        assert_eq!(serde_json::from_str::<Holder>(old).unwrap(), big);
        let none = Holder { guid: None };
        assert_eq!(serde_json::to_string(&none).unwrap(), r#"{"guid":null}"#);
        assert_eq!(serde_json::from_str::<Holder>("{}").unwrap(), none);
        let err = serde_json::from_str::<Holder>(r#"{"guid":"12x"}"#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(r#"a GUID is a decimal number, not "12x""#),
            "{err}"
        );
    }
}
