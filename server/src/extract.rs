//! [`JsonBody`]: axum's `Json` with our error format. The body is buffered
//! under the router's `DefaultBodyLimit` (413 `BodyTooLarge` over it) and
//! parsed with `serde_json`, so a malformed body gets the parser's message
//! and position as an [`ApiError`].

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// A JSON request body of type `T`, a struct: a JSON object (any content
/// type is accepted).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        // serde would fill a struct from an array too (fields in order).
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::invalid("the body must be a JSON object, not an array"));
        }
        parse(&bytes).map(JsonBody)
    }
}

/// Structs in JSON bodies from JSON objects only, for
/// `#[serde(deserialize_with = "object::opt")]`: serde would also fill a
/// struct from an array (fields in order), which the document does not allow.
pub mod object {
    use serde::de::{DeserializeOwned, Error, Unexpected};
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    /// An optional struct: an object, or `null` for none.
    pub fn opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        from_value(Option::<Value>::deserialize(d)?.unwrap_or(Value::Null))
    }

    /// `value` as a `T` when it is an object, `None` when it is `null`.
    pub fn from_value<T: DeserializeOwned, E: Error>(value: Value) -> Result<Option<T>, E> {
        match value {
            Value::Null => Ok(None),
            object @ Value::Object(_) => T::deserialize(object).map(Some).map_err(E::custom),
            Value::Array(_) => Err(E::invalid_type(Unexpected::Seq, &"a JSON object")),
            Value::Bool(b) => Err(E::invalid_type(Unexpected::Bool(b), &"a JSON object")),
            Value::Number(_) => Err(E::invalid_type(Unexpected::Other("number"), &"a JSON object")),
            Value::String(s) => Err(E::invalid_type(Unexpected::Str(&s), &"a JSON object")),
        }
    }
}

/// The whole body, under the router's `DefaultBodyLimit`.
pub async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge {
                limit: state.config().max_body_bytes,
            }
        } else {
            ApiError::invalid(format!("cannot read the request body: {}", rejection.body_text()))
        }
    })
}

/// Parse a whole body as `T`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::from_json(&e))
}

/// Whole numbers in JSON bodies, for `#[serde(deserialize_with = …)]`:
/// JSON Schema (and so the `OpenAPI` document) counts `830.0` as an
/// integer, so a whole number written with a zero fraction is taken as one;
/// `1.5` and numbers out of the field's range are still errors.
pub mod whole {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::Deserializer;
    use serde::de::{Error, Unexpected, Visitor};

    /// A required whole number.
    pub fn one<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i64> + TryFrom<u64>,
    {
        d.deserialize_any(Whole(PhantomData))
    }

    /// An optional whole number (`null` is none).
    pub fn opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i64> + TryFrom<u64>,
    {
        d.deserialize_option(Opt(PhantomData))
    }

    struct Whole<T>(PhantomData<T>);

    impl<T: TryFrom<i64> + TryFrom<u64>> Visitor<'_> for Whole<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number in range")
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<T, E> {
            // Below 2^63 in magnitude a whole f64 converts to i64 exactly.
            if v.fract() == 0.0 && v.abs() < 9_223_372_036_854_775_808.0 {
                #[allow(clippy::cast_possible_truncation, reason = "whole and in range: exact")]
                self.visit_i64(v as i64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }

    struct Opt<T>(PhantomData<T>);

    impl<'de, T: TryFrom<i64> + TryFrom<u64>> Visitor<'de> for Opt<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number in range, or null")
        }

        fn visit_none<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            one(d).map(Some)
        }
    }

    #[cfg(test)]
    mod tests {
        #[derive(Debug, serde::Deserialize)]
        struct Body {
            #[serde(deserialize_with = "super::one")]
            n: i64,
            #[serde(default, deserialize_with = "super::opt")]
            m: Option<u64>,
        }

        fn parse(text: &str) -> Result<(i64, Option<u64>), String> {
            serde_json::from_str::<Body>(text)
                .map(|b| (b.n, b.m))
                .map_err(|e| e.to_string())
        }

        #[test]
        fn whole_numbers_with_a_zero_fraction_are_integers() {
            assert_eq!(parse(r#"{"n": 830.0, "m": 7.0}"#), Ok((830, Some(7))));
            assert_eq!(parse(r#"{"n": -2, "m": null}"#), Ok((-2, None)));
            assert_eq!(parse(r#"{"n": 1e3}"#), Ok((1000, None)));
            for bad in [
                r#"{"n": 1.5}"#,
                r#"{"n": 1e30}"#,
                r#"{"n": 1, "m": -1}"#,
                r#"{"n": 1, "m": -1.0}"#,
                r#"{"n": "1"}"#,
            ] {
                assert!(parse(bad).is_err(), "{bad}");
            }
        }
    }
}
