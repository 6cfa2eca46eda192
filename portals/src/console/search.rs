//! `GET /api/search?kind=client|product|order&id=N`: one row by ID, read
//! the way the portals read it (a linearizable read through [`Shop`] that
//! waits out a transaction's lock), shown as the API's `data` JSON.
//!
//! The query is parsed before anything is read ([`SearchQuery::parse`]): a
//! missing or unknown `kind` and an ID that is not a decimal integer within
//! the API's limits are a 400 with the same sentence the gRPC API gives.

use serde_json::{json, Value};

use super::web::Answer;
use crate::request;
use crate::service::{order_json, product_json};
use crate::shop::{Shop, ShopError};

/// What can be searched for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A client by CID.
    Client,
    /// A product by PID.
    Product,
    /// An order by OID.
    Order,
}

impl Kind {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "client" => Ok(Kind::Client),
            "product" => Ok(Kind::Product),
            "order" => Ok(Kind::Order),
            other => Err(format!("kind must be client, product or order, got {}", request::echo(other))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::Product => "product",
            Kind::Order => "order",
        }
    }
}

/// A parsed search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchQuery {
    /// What to look for.
    pub kind: Kind,
    /// Its ID.
    pub id: u64,
}

impl SearchQuery {
    /// Parses `kind=...&id=...` (in any order; other parameters are ignored).
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let param = |name: &str| {
            query.unwrap_or_default().split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == name).then(|| decoded(value))
            })
        };
        let kind = param("kind").ok_or("add kind=client, kind=product or kind=order to the query")?;
        let kind = Kind::parse(&kind)?;
        let id = param("id").ok_or("add id=N to the query, N being a decimal integer such as 7")?;
        let id = request::parse_id("id", &id).map_err(|bad| bad.0)?;
        Ok(SearchQuery { kind, id })
    }
}

/// The row asked for: 200 with `{kind, id, data}`, 404 if there is none,
/// 503 if its shard cannot answer.
pub async fn find(shop: &Shop, query: SearchQuery) -> Answer {
    let SearchQuery { kind, id } = query;
    let data = match kind {
        Kind::Client => shop.get_client(id).await.map(|found| found.map(|c| parse_json(&c.document))),
        Kind::Product => shop.get_product(id).await.map(|found| found.map(|p| parse_json(&product_json(id, &p)))),
        Kind::Order => shop.get_order(id).await.map(|found| found.map(|o| parse_json(&order_json(&o)))),
    };
    match data {
        Ok(Some(data)) => Answer::json(200, &json!({ "kind": kind.name(), "id": id.to_string(), "data": data })),
        Ok(None) => Answer::error(404, &format!("{} {id} does not exist", kind.name())),
        Err(error @ ShopError::Unavailable(_)) => Answer::error(503, &error.to_string()),
        Err(error) => Answer::error(500, &error.to_string()),
    }
}

/// Stored JSON text as a value; text that is not JSON stays a string.
fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// A query parameter's value with `+` and `%XX` escapes decoded.
fn decoded(value: &str) -> String {
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        let escaped = tail.get(..2).and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (first, escaped) {
            (b'%', Some(byte)) => {
                bytes.push(byte);
                rest = &tail[2..];
            }
            (b'+', _) => {
                bytes.push(b' ');
                rest = tail;
            }
            (byte, _) => {
                bytes.push(byte);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_and_a_numeric_id_make_a_query() {
        assert_eq!(SearchQuery::parse(Some("kind=product&id=42")), Ok(SearchQuery { kind: Kind::Product, id: 42 }));
        assert_eq!(SearchQuery::parse(Some("id=7&x=1&kind=order")), Ok(SearchQuery { kind: Kind::Order, id: 7 }));
        assert_eq!(SearchQuery::parse(Some("kind=client&id=0")), Ok(SearchQuery { kind: Kind::Client, id: 0 }));
        assert_eq!(SearchQuery::parse(Some("kind=%63lient&id=%31")), Ok(SearchQuery { kind: Kind::Client, id: 1 }));
    }

    #[test]
    fn escapes_are_decoded_and_broken_ones_kept() {
        assert_eq!(decoded("a%20b+c"), "a b c");
        assert_eq!(decoded("100%"), "100%");
        assert_eq!(decoded("%zz%4"), "%zz%4");
        assert_eq!(decoded("%C3%A9"), "é");
    }

    #[test]
    fn bad_queries_are_refused_with_a_reason() {
        let refused = |query: Option<&str>| SearchQuery::parse(query).expect_err("refused");
        assert!(refused(None).contains("add kind="));
        assert!(refused(Some("id=4")).contains("add kind="));
        assert!(refused(Some("kind=client")).contains("add id=N"));
        assert!(refused(Some("kind=bogus&id=4")).contains("kind must be client, product or order, got \"bogus\""));
        assert!(refused(Some("kind=client&id=abc")).contains("id must be a decimal integer"));
        assert!(refused(Some("kind=client&id=")).contains("id is empty"));
        assert!(refused(Some("kind=client&id=-3")).contains("id must be a decimal integer"));
        assert!(refused(Some("kind=client&id=99999999999999999999")).contains("too large"));
        let long = format!("kind={}&id=1", "x".repeat(5000));
        assert!(refused(Some(&long)).len() < 200, "bad input is echoed shortened");
    }
}
