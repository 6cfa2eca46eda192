//! Turning the API's strings into typed requests, or a 400 that says why.
//!
//! IDs are decimal integers written as strings. `data` is JSON: a client is
//! an object with a `name`; a product an object with `name`, `price` (a
//! number or numeric string, >= 0) and `quantity` (an integer or integer
//! string, >= 0), other fields kept as given; an order either the course's
//! `{"OID","CID","products":[{"PID","quantity"}]}` or the seed's bare list
//! `[{"id": PID, "quantity": N}]`. IDs repeated inside `data` must agree
//! with the message's. Every message names the field at fault.
//!
//! Every bound of [`storage_node::limits`] that a caller's input can reach
//! is checked here, before anything is planned: ID length, `data` size,
//! price, quantity (of a product, of an order line, and of a PID repeated
//! in one order), lines per order. The state machine checks the same bounds
//! again; a request refused here never gets that far. The CLI calls these
//! same functions, so it refuses exactly what the portals refuse.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use storage_node::limits::{MAX_DATA_BYTES, MAX_ID_CHARS, MAX_ORDER_LINES, MAX_PRICE, MAX_QUANTITY};

use crate::shop::{ItemRequest, ProductInput};

/// A request that cannot be served as sent (API code 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

/// At most this many characters of a caller's input are echoed in errors.
const ECHO_CHARS: usize = 64;

/// `text` for an error message: quoted, cut if long.
pub(crate) fn echo(text: &str) -> String {
    match text.char_indices().nth(ECHO_CHARS) {
        Some((cut, _)) => format!("{:?}... ({} bytes)", &text[..cut], text.len()),
        None => format!("{text:?}"),
    }
}

/// Parses an ID field (`field` names it in errors).
pub fn parse_id(field: &str, text: &str) -> Result<u64, BadRequest> {
    if text.is_empty() {
        return Err(bad(format!("{field} is empty; it must be a decimal integer such as \"7\"")));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("{field} must be a decimal integer, got {}", echo(text))));
    }
    if text.len() > MAX_ID_CHARS {
        return Err(bad(format!(
            "{field} {} has {} digits; at most {MAX_ID_CHARS} are allowed",
            echo(text),
            text.len()
        )));
    }
    text.parse().map_err(|_| bad(format!("{field} {} is too large; the largest ID is {}", echo(text), u64::MAX)))
}

/// Parses `data` as JSON, within the size limit.
fn parse_json(data: &str) -> Result<Value, BadRequest> {
    if data.len() > MAX_DATA_BYTES {
        return Err(bad(format!("data is {} bytes; the limit is {MAX_DATA_BYTES}", data.len())));
    }
    if data.trim().is_empty() {
        return Err(bad("data is empty; it must be a JSON document"));
    }
    serde_json::from_str(data).map_err(|e| bad(format!("data is not valid JSON: {e}")))
}

fn parse_object(data: &str, what: &str) -> Result<Map<String, Value>, BadRequest> {
    match parse_json(data)? {
        Value::Object(object) => Ok(object),
        other => Err(bad(format!("{what} data must be a JSON object, got {}", kind(&other)))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// An ID given as a number or a string of digits.
fn id_value(field: &str, value: &Value) -> Result<u64, BadRequest> {
    match value {
        Value::String(text) => parse_id(field, text),
        Value::Number(n) => n.as_u64().ok_or_else(|| bad(format!("{field} must be a non-negative integer, got {n}"))),
        other => Err(bad(format!("{field} must be a decimal integer, got {}", kind(other)))),
    }
}

/// Checks that an ID repeated in `data` agrees with the message's.
fn check_same_id(object: &Map<String, Value>, field: &str, id: u64) -> Result<(), BadRequest> {
    match object.get(field) {
        None => Ok(()),
        Some(value) => match id_value(field, value)? {
            found if found == id => Ok(()),
            found => Err(bad(format!("data says {field} {found}, but the message is for {field} {id}"))),
        },
    }
}

/// A client's document: the object with its CID filled in.
pub fn client_document(cid: u64, data: &str) -> Result<String, BadRequest> {
    let mut object = parse_object(data, "client")?;
    check_same_id(&object, "CID", cid)?;
    match object.get("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => {}
        Some(Value::String(_)) => return Err(bad("client name is empty")),
        Some(other) => return Err(bad(format!("client name must be a string, got {}", kind(other)))),
        None => return Err(bad("client data needs a \"name\"")),
    }
    object.insert("CID".into(), Value::String(cid.to_string()));
    let document = Value::Object(object).to_string();
    if document.len() > MAX_DATA_BYTES {
        return Err(bad(format!(
            "the client's document is {} bytes with its CID; the limit is {MAX_DATA_BYTES}",
            document.len()
        )));
    }
    Ok(document)
}

/// A product from its `data`.
pub fn product(pid: u64, data: &str) -> Result<ProductInput, BadRequest> {
    let mut object = parse_object(data, "product")?;
    check_same_id(&object, "PID", pid)?;
    object.remove("PID");
    let name = match object.remove("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name,
        Some(Value::String(_)) => return Err(bad("product name is empty")),
        Some(other) => return Err(bad(format!("product name must be a string, got {}", kind(&other)))),
        None => return Err(bad("product data needs a \"name\"")),
    };
    let price = price(object.remove("price").as_ref())?;
    let quantity = match object.remove("quantity") {
        Some(value) => quantity("quantity", &value)?,
        None => return Err(bad("product data needs a \"quantity\"")),
    };
    Ok(ProductInput { name, price, quantity, extra: Value::Object(object).to_string() })
}

fn price(value: Option<&Value>) -> Result<f64, BadRequest> {
    let price = match value {
        None => return Err(bad("product data needs a \"price\"")),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(text)) => text.trim().parse::<f64>().ok(),
        Some(other) => return Err(bad(format!("price must be a number, got {}", kind(other)))),
    };
    match price {
        Some(p) if p.is_finite() && (0.0..=MAX_PRICE).contains(&p) => Ok(p),
        Some(p) if p.is_finite() && p < 0.0 => Err(bad(format!("price must not be negative, got {p}"))),
        Some(p) if p.is_finite() => Err(bad(format!("price {p} is over the limit of {MAX_PRICE}"))),
        _ => {
            Err(bad(format!("price must be a number, got {}", echo(&value.map(Value::to_string).unwrap_or_default()))))
        }
    }
}

/// A quantity (of stock, of an order line): a whole number from 0 to
/// [`MAX_QUANTITY`], given as a number or a string.
fn quantity(field: &str, value: &Value) -> Result<u64, BadRequest> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        other => return Err(bad(format!("{field} must be a whole number, got {}", kind(other)))),
    };
    let over = || bad(format!("{field} {} is over the limit of {MAX_QUANTITY}", echo(&text)));
    if let Ok(n) = text.parse::<u64>() {
        return if n <= MAX_QUANTITY { Ok(n) } else { Err(over()) };
    }
    match text.parse::<f64>() {
        Ok(n) if n < 0.0 => Err(bad(format!("{field} must not be negative, got {}", echo(&text)))),
        Ok(n) if n.fract() != 0.0 => Err(bad(format!("{field} must be a whole number, got {}", echo(&text)))),
        Ok(n) if n <= MAX_QUANTITY as f64 => Ok(n as u64),
        Ok(n) if n.is_finite() => Err(over()),
        _ => Err(bad(format!("{field} must be a whole number, got {}", echo(&text)))),
    }
}

/// Whether an order's quantities must be positive (create) or may be 0
/// (update: 0 removes the line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantities {
    /// Every quantity > 0.
    Positive,
    /// Every quantity >= 0.
    NonNegative,
}

/// The items of an order's `data`, in either shape.
pub fn order_items(oid: u64, cid: u64, data: &str, rule: Quantities) -> Result<Vec<ItemRequest>, BadRequest> {
    let items = match parse_json(data)? {
        Value::Array(items) => items,
        Value::Object(object) => {
            check_same_id(&object, "OID", oid)?;
            check_same_id(&object, "CID", cid)?;
            match object.get("products") {
                Some(Value::Array(items)) => items.clone(),
                Some(other) => return Err(bad(format!("products must be a list, got {}", kind(other)))),
                None => return Err(bad("order data needs \"products\": a list of {\"PID\", \"quantity\"}")),
            }
        }
        other => return Err(bad(format!("order data must be a list or an object, got {}", kind(&other)))),
    };
    if items.len() > MAX_ORDER_LINES {
        return Err(bad(format!("the order lists {} products; at most {MAX_ORDER_LINES} are allowed", items.len())));
    }
    let items = items.iter().enumerate().map(|(i, item)| order_item(i, item, rule)).collect::<Result<Vec<_>, _>>()?;
    order_lines(&items)?;
    Ok(items)
}

/// The lines an order's items make: repeated PIDs summed, each sum within
/// [`MAX_QUANTITY`], at most [`MAX_ORDER_LINES`] of them.
pub fn order_lines(items: &[ItemRequest]) -> Result<BTreeMap<u64, u64>, BadRequest> {
    let mut lines: BTreeMap<u64, u64> = BTreeMap::new();
    for item in items {
        let total = lines.entry(item.pid).or_default();
        *total = total.saturating_add(item.quantity);
        if *total > MAX_QUANTITY {
            let pid = item.pid;
            return Err(bad(format!("the quantities of product {pid} add up to over the limit of {MAX_QUANTITY}")));
        }
    }
    if lines.len() > MAX_ORDER_LINES {
        return Err(bad(format!("the order has {} products; at most {MAX_ORDER_LINES} are allowed", lines.len())));
    }
    Ok(lines)
}

fn order_item(position: usize, item: &Value, rule: Quantities) -> Result<ItemRequest, BadRequest> {
    let Value::Object(item) = item else {
        return Err(bad(format!("product #{} of the order must be an object, got {}", position + 1, kind(item))));
    };
    let pid = match item.get("PID").or_else(|| item.get("id")) {
        Some(value) => id_value("PID", value)?,
        None => return Err(bad(format!("product #{} of the order needs a \"PID\"", position + 1))),
    };
    let quantity = match item.get("quantity") {
        Some(value) => quantity(&format!("quantity of product {pid}"), value)?,
        None => return Err(bad(format!("product {pid} of the order needs a \"quantity\""))),
    };
    if rule == Quantities::Positive && quantity == 0 {
        return Err(bad(format!("quantity of product {pid} must be above 0")));
    }
    Ok(ItemRequest { pid, quantity })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_decimal_integers() {
        assert_eq!(parse_id("CID", "44"), Ok(44));
        for bad_id in ["", "abc", "-1", " 7", "7.0", "1e3", "99999999999999999999999"] {
            let error = parse_id("CID", bad_id).unwrap_err().0;
            assert!(error.starts_with("CID"), "{bad_id:?}: {error}");
        }
    }

    #[test]
    fn clients_need_an_object_with_a_name() {
        let doc = client_document(7, r#"{"name":"Ana","city":"Uberlândia"}"#).unwrap();
        let value: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(value["CID"], "7");
        assert_eq!(value["city"], "Uberlândia");
        assert!(client_document(7, "{not json").unwrap_err().0.contains("not valid JSON"));
        assert!(client_document(7, r#"{"city":"x"}"#).unwrap_err().0.contains("\"name\""));
        assert!(client_document(7, r#"["Ana"]"#).unwrap_err().0.contains("JSON object"));
        assert!(client_document(7, r#"{"CID":"8","name":"x"}"#).unwrap_err().0.contains("CID 8"));
        assert!(client_document(7, r#"{"CID":7,"name":"x"}"#).is_ok());
    }

    #[test]
    fn products_accept_numbers_and_numeric_strings() {
        let p = product(1, r#"{"name":"one","price":"2.5","quantity":"8","color":"red"}"#).unwrap();
        assert_eq!((p.name.as_str(), p.price, p.quantity), ("one", 2.5, 8));
        assert_eq!(p.extra, r#"{"color":"red"}"#);
        let p = product(1, r#"{"PID":"1","name":"one","price":3,"quantity":9}"#).unwrap();
        assert_eq!((p.price, p.quantity), (3.0, 9));
    }

    #[test]
    fn products_refuse_impossible_values() {
        let cases = [
            (r#"{"name":"x","price":-1,"quantity":1}"#, "negative"),
            (r#"{"name":"x","price":"cheap","quantity":1}"#, "price must be a number"),
            (r#"{"name":"x","price":1,"quantity":-2}"#, "negative"),
            (r#"{"name":"x","price":1,"quantity":1.5}"#, "whole number"),
            (r#"{"name":"x","quantity":1}"#, "\"price\""),
            (r#"{"price":1,"quantity":1}"#, "\"name\""),
            (r#"{"name":"x","price":1}"#, "\"quantity\""),
            (r#"{"PID":2,"name":"x","price":1,"quantity":1}"#, "PID 2"),
        ];
        for (data, expected) in cases {
            let error = product(1, data).unwrap_err().0;
            assert!(error.contains(expected), "{data}: {error}");
        }
    }

    #[test]
    fn orders_come_in_both_shapes() {
        let official = r#"{"OID":"10","CID":"2","products":[{"PID":"1","quantity":"3","price":2.5}]}"#;
        let seed = r#"[{"id": 1, "quantity": 3}]"#;
        for data in [official, seed] {
            assert_eq!(order_items(10, 2, data, Quantities::Positive), Ok(vec![ItemRequest { pid: 1, quantity: 3 }]));
        }
        let repeated = r#"[{"id":2,"quantity":2},{"id":2,"quantity":4}]"#;
        assert_eq!(order_items(10, 2, repeated, Quantities::Positive).unwrap().len(), 2, "summing is the shop's job");
    }

    #[test]
    fn order_quantities_follow_the_call() {
        let zero = r#"[{"id":1,"quantity":0}]"#;
        assert!(order_items(10, 2, zero, Quantities::Positive).unwrap_err().0.contains("above 0"));
        assert_eq!(order_items(10, 2, zero, Quantities::NonNegative), Ok(vec![ItemRequest { pid: 1, quantity: 0 }]));
        for (data, expected) in [
            (r#"[{"id":1,"quantity":-1}]"#, "negative"),
            (r#"[{"id":1,"quantity":1.5}]"#, "whole number"),
            (r#"[{"id":"x","quantity":1}]"#, "PID must be a decimal integer"),
            (r#"[{"quantity":1}]"#, "needs a \"PID\""),
            (r#"[{"id":1}]"#, "needs a \"quantity\""),
            (r#"{"OID":"11","products":[]}"#, "OID 11"),
            (r#"{"OID":"10"}"#, "\"products\""),
            (r#""text""#, "a list or an object"),
        ] {
            let error = order_items(10, 2, data, Quantities::NonNegative).unwrap_err().0;
            assert!(error.contains(expected), "{data}: {error}");
        }
    }

    #[test]
    fn every_bound_is_a_sentence() {
        let over_quantity = MAX_QUANTITY + 1;
        let cases: Vec<(Result<(), BadRequest>, &str)> = vec![
            (parse_id("CID", &"1".repeat(MAX_ID_CHARS + 1)).map(drop), "at most 20 are allowed"),
            (
                product(1, &format!(r#"{{"name":"x","price":1,"quantity":{over_quantity}}}"#)).map(drop),
                "over the limit",
            ),
            (product(1, r#"{"name":"x","price":1,"quantity":"1e10"}"#).map(drop), "over the limit"),
            (product(1, r#"{"name":"x","price":1,"quantity":18446744073709551616}"#).map(drop), "over the limit"),
            (product(1, r#"{"name":"x","price":1000000000.5,"quantity":1}"#).map(drop), "over the limit"),
            (product(1, r#"{"name":"x","price":"NaN","quantity":1}"#).map(drop), "must be a number"),
            (product(1, r#"{"name":"x","price":"inf","quantity":1}"#).map(drop), "must be a number"),
            (
                order_items(10, 2, &format!(r#"[{{"id":1,"quantity":{over_quantity}}}]"#), Quantities::Positive)
                    .map(drop),
                "over the limit",
            ),
            (
                order_items(
                    10,
                    2,
                    r#"[{"id":1,"quantity":600000000},{"id":1,"quantity":400000001}]"#,
                    Quantities::Positive,
                )
                .map(drop),
                "add up to over the limit",
            ),
        ];
        for (outcome, expected) in cases {
            let why = outcome.unwrap_err().0;
            assert!(why.contains(expected), "{why:?} should say {expected:?}");
        }
    }

    #[test]
    fn bounds_themselves_are_accepted() {
        assert!(parse_id("CID", &"0".repeat(MAX_ID_CHARS)).is_ok());
        let p = product(1, &format!(r#"{{"name":"x","price":{MAX_PRICE},"quantity":{MAX_QUANTITY}}}"#)).unwrap();
        assert_eq!((p.price, p.quantity), (MAX_PRICE, MAX_QUANTITY));
        let half = MAX_QUANTITY / 2;
        let items = format!(r#"[{{"id":1,"quantity":{half}}},{{"id":1,"quantity":{half}}}]"#);
        assert_eq!(order_lines(&order_items(10, 2, &items, Quantities::Positive).unwrap()).unwrap()[&1], MAX_QUANTITY);
    }

    #[test]
    fn orders_have_at_most_so_many_lines() {
        let line = |pid: usize| format!(r#"{{"id":{pid},"quantity":1}}"#);
        let full: Vec<String> = (1..=MAX_ORDER_LINES).map(line).collect();
        assert!(order_items(10, 2, &format!("[{}]", full.join(",")), Quantities::Positive).is_ok());
        let over: Vec<String> = (1..=MAX_ORDER_LINES + 1).map(line).collect();
        let why = order_items(10, 2, &format!("[{}]", over.join(",")), Quantities::Positive).unwrap_err().0;
        assert!(why.contains("at most 100 are allowed"), "{why}");
    }

    #[test]
    fn data_is_bounded_before_and_after_normalizing() {
        let at_limit = format!(r#"{{"name":"{}"}}"#, "x".repeat(MAX_DATA_BYTES - 11));
        assert_eq!(at_limit.len(), MAX_DATA_BYTES);
        let why = client_document(7, &at_limit).unwrap_err().0;
        assert!(why.contains("with its CID"), "{why}");
        let over = format!(r#"{{"name":"{}"}}"#, "x".repeat(MAX_DATA_BYTES));
        assert!(client_document(7, &over).unwrap_err().0.contains("the limit is 65536"));
    }

    #[test]
    fn long_input_is_cut_in_messages() {
        let error = parse_id("CID", &"x".repeat(100_000)).unwrap_err().0;
        assert!(error.len() < 200, "{error}");
        assert!(error.contains("100000 bytes"), "{error}");
    }

    #[test]
    fn oversized_data_is_refused_before_parsing() {
        let huge = format!("{{\"name\":\"{}\"}}", "x".repeat(10 * 1024 * 1024));
        assert!(client_document(1, &huge).unwrap_err().0.contains("the limit is"));
    }
}
