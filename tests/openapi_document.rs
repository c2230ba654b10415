//! docs/openapi.json against the gateway's own statement of its bounds
//! (`omniroute::http::fields`, which the decoders check): every field a
//! request can carry is bounded in the document exactly as the server
//! bounds it, and every object refuses unknown fields in both.

use std::collections::BTreeSet;

use omniroute::http::fields::{Bound, CURSOR_TEXT_PATTERN, DOCUMENTED, NAME_PATTERN, TIME_PATTERN};
use serde_json::Value;

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// What the document must say at a field with `bound`, as (keyword, value).
fn stated(bound: Bound) -> Vec<(&'static str, Value)> {
    use serde_json::json;
    match bound {
        Bound::Whole(r) => vec![
            ("type", json!("integer")),
            ("minimum", json!(r.min)),
            ("maximum", json!(r.max)),
        ],
        Bound::Degrees(r) => vec![
            ("type", json!("number")),
            ("minimum", json!(r.min)),
            ("maximum", json!(r.max)),
        ],
        Bound::Items(r) => vec![
            ("type", json!("array")),
            ("minItems", json!(r.min)),
            ("maxItems", json!(r.max)),
        ],
        Bound::Name => vec![("type", json!("string")), ("pattern", json!(NAME_PATTERN))],
        Bound::Time => vec![("type", json!("string")), ("pattern", json!(TIME_PATTERN))],
        Bound::CursorText => vec![
            ("type", json!("string")),
            ("pattern", json!(CURSOR_TEXT_PATTERN)),
        ],
    }
}

/// Numbers compare by value: the document may write 90 where the code has 90.0.
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_i64(), b.as_i64(), a.as_f64(), b.as_f64()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// The pointers of every field a request can carry (a parameter, or a
/// scalar or array property of a body, however deep), found by walking the
/// document from its operations; each object on the way is checked to
/// refuse unknown properties.
fn fields_of(doc: &Value) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for methods in doc["paths"].as_object().unwrap().values() {
        for operation in methods.as_object().unwrap().values() {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let target = parameter["$ref"]
                    .as_str()
                    .expect("parameters are components");
                walk(doc, &format!("{}/schema", &target[1..]), &mut found);
            }
            let body = &operation["requestBody"]["content"]["application/json"]["schema"];
            if let Some(target) = body["$ref"].as_str() {
                walk(doc, &target[1..], &mut found);
            }
        }
    }
    found
}

fn walk(doc: &Value, pointer: &str, found: &mut BTreeSet<String>) {
    let schema = doc
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{pointer} is missing"));
    if let Some(target) = schema["$ref"].as_str() {
        return walk(doc, &target[1..], found);
    }
    match schema["type"].as_str() {
        Some("object") => {
            assert_eq!(
                schema["additionalProperties"],
                Value::Bool(false),
                "{pointer} must refuse unknown properties, as the server does"
            );
            for name in schema["properties"].as_object().unwrap().keys() {
                walk(doc, &format!("{pointer}/properties/{name}"), found);
            }
        }
        Some("array") => {
            found.insert(pointer.to_string());
            walk(doc, &format!("{pointer}/items"), found);
        }
        // An enum's values or a flag bound themselves.
        Some("boolean") => {}
        Some("string") if schema.get("enum").is_some() => {}
        Some(_) => {
            found.insert(pointer.to_string());
        }
        None => panic!("{pointer} states no type"),
    }
}

#[test]
fn every_bound_the_gateway_checks_is_stated_in_the_document() {
    // Proves each field the decoders bound has that bound in docs/openapi.json (type,
    // minimum/maximum, item counts, pattern), and that the document has no field the
    // decoders' list leaves unbounded.
    let doc = document();
    for (pointer, bound) in DOCUMENTED {
        let schema = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("docs/openapi.json has nothing at {pointer}"));
        for (keyword, value) in stated(*bound) {
            assert!(
                same(&schema[keyword], &value),
                "{pointer}: {keyword} is {} in the document, {value} in the server",
                schema[keyword]
            );
        }
    }
    let listed: BTreeSet<String> = DOCUMENTED.iter().map(|(p, _)| p.to_string()).collect();
    let in_document = fields_of(&doc);
    let unbounded: Vec<_> = in_document.difference(&listed).collect();
    assert!(
        unbounded.is_empty(),
        "fields the server does not list: {unbounded:?}"
    );
    let unreachable: Vec<_> = listed.difference(&in_document).collect();
    assert!(
        unreachable.is_empty(),
        "listed but no request carries them: {unreachable:?}"
    );
}
