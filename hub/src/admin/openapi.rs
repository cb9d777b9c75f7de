//! The OpenAPI document as served: the operations the routes declare, finished with
//! what they share — every refusal an operation can answer (the refusal kinds' HTTP
//! statuses, `vigo_common::refusal`), and the shapes of ids, roles, statuses and sort
//! keys as patterns and enums — so a client generated from it, or a schema-driven fuzzer
//! (CI runs schemathesis against a live cluster), sees what the server does.

use serde_json::{Value, json};

use vigo_common::fleet_query::{STATUSES, SortField};

/// A trait predicate (`vigo_common::fleet_query::TraitPredicate`): a trait name, alone
/// (present), or with `=`/`!=` and any value, or with `>`, `>=`, `<`, `<=` and a number.
const TRAIT_PREDICATE: &str = r"^[^=!<>]*[^=!<>\s][^=!<>]*((!=|=).*|(>=|<=|>|<)\s*[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?\s*)?$";

/// A hostname glob as this document promises it works: `*` and `?` over any other
/// characters. (The server also takes `[...]` classes and `{a,b}` alternates, which an
/// unbalanced bracket or brace makes malformed.)
const HOSTNAME_GLOB: &str = r"^[^\[\]{}\\]*$";

/// 16 hex digits, not all zero.
/// A host name as envoys enroll under (`vigo_common::hostname::normalize`).
const HOSTNAME: &str = r"^[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*$";
const ENVOY_ID: &str = "^(?!0{16}$)[0-9a-fA-F]{16}$";

/// 32 hex digits.
const TASK_ID: &str = "^[0-9a-fA-F]{32}$";

/// What a task listing filters on ("" or absent: every state).
const TASK_STATES: [&str; 6] = ["", "running", "finished", "stopped", "cancelled", "expired"];

fn refusal(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiError"}}}
    })
}

/// The refusals an operation can answer, by status. `names_spoke`: it takes a spoke
/// filter, which answers 404 for a spoke that does not exist.
fn refusals(method: &str, path: &str, names_spoke: bool) -> Vec<(&'static str, &'static str)> {
    let write = method != "get";
    let mut out = vec![
        (
            "400",
            "Malformed: the error names the parameter or field at fault",
        ),
        (
            "401",
            "No bearer token or admin certificate, or one that is unknown, expired or revoked",
        ),
        ("500", "An internal failure"),
        (
            "503",
            "No hub leader right now, or the spokes needed did not answer: retry",
        ),
        (
            "504",
            "No answer within the deadline; for a write the outcome is unknown: retry with the same Idempotency-Key",
        ),
    ];
    if write || path == "/api/v1/tokens" {
        out.push((
            "403",
            "The token's role may not do this (operator or admin needed)",
        ));
    }
    if write || names_spoke || path.contains('{') {
        out.push(("404", "What the request names does not exist"));
    }
    if write {
        out.push((
            "409",
            "It exists already, or conflicts with a change under way (the error says which)",
        ));
        out.push((
            "412",
            "The cluster is not in a state that allows it (the error says why)",
        ));
        out.push(("413", "The body is larger than this operation takes"));
        out.push(("408", "The body did not arrive in time"));
    }
    out
}

/// Finishes the generated document: refusals on every operation, parameter and field
/// shapes.
pub fn finish(doc: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(doc).expect("the OpenAPI document serializes");
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                let names_spoke = op
                    .get("parameters")
                    .and_then(Value::as_array)
                    .is_some_and(|ps| ps.iter().any(|p| p.get("name") == Some(&json!("spoke"))));
                // `get_mut`, never indexing: indexing a JSON object inserts what it lacks.
                if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                    for (status, description) in refusals(method, path, names_spoke) {
                        responses
                            .entry(status)
                            .or_insert_with(|| refusal(description));
                    }
                }
                if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                    for p in params {
                        shape_parameter(path, p);
                    }
                }
            }
        }
    }
    if let Some(schemas) = doc.get_mut("components").and_then(|c| c.get_mut("schemas")) {
        shape_schemas(schemas);
    }
    doc
}

/// The sort keys a listing takes: "" (the default order), each field, and each field
/// reversed.
fn sort_keys() -> Vec<String> {
    let mut keys = vec![String::new()];
    for field in SortField::ALL {
        keys.push(field.name().to_string());
        keys.push(format!("-{}", field.name()));
    }
    keys
}

fn shape_parameter(path: &str, p: &mut Value) {
    let name = p
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(schema) = p.get_mut("schema").filter(|s| s.is_object()) else {
        return;
    };
    match name.as_str() {
        "envoy_id" => schema["pattern"] = json!(ENVOY_ID),
        "task_id" => schema["pattern"] = json!(TASK_ID),
        "state" if path == "/api/v1/tasks" => schema["enum"] = json!(TASK_STATES),
        "node_id" => schema["minimum"] = json!(1),
        "key" if path.starts_with("/api/v1/bundle-keys") => {
            schema["pattern"] = json!("^[0-9a-fA-F]{8,64}$");
        }
        "status" => schema["enum"] = json!(STATUSES),
        "sort" => {
            schema["enum"] = json!(sort_keys());
        }
        "limit" if path.ends_with("/runs") => {
            schema["minimum"] = json!(0);
            schema["maximum"] = json!(100);
        }
        "host" => {
            schema["pattern"] = json!(HOSTNAME);
            schema["maxLength"] = json!(253);
        }
        "version" => schema["pattern"] = json!("^[0-9a-f]{1,64}$"),
        "window" => schema["pattern"] = json!("^[1-9][0-9]{0,5}(s|m|h|d)$"),
        "limit" => {
            // 0 (as absent): the default page.
            schema["minimum"] = json!(0);
            schema["maximum"] = json!(1000);
        }
        "trait" => {
            if let Some(items) = schema.get_mut("items").filter(|i| i.is_object()) {
                items["pattern"] = json!(TRAIT_PREDICATE);
            }
        }
        "after" => schema["minimum"] = json!(0),
        "hostname" => {
            schema["pattern"] = json!(HOSTNAME_GLOB);
            schema["maxLength"] = json!(vigo_common::limits::MAX_HOSTNAME_PATTERN);
        }
        "spoke_id" | "name" | "key" => schema["minLength"] = json!(1),
        _ => {}
    }
}

/// Enums and patterns on the JSON bodies' fields ("" stays allowed where proto3 reads
/// it as "not set").
fn shape_schemas(schemas: &mut Value) {
    let with_unset = |list: &[&str]| {
        let mut values: Vec<&str> = vec![""];
        values.extend_from_slice(list);
        json!(values)
    };
    let fields: [(&str, &str, Value); 8] = [
        (
            "RunTaskRequest",
            "kind",
            json!(["exec", "apply", "refresh_traits", "query"]),
        ),
        ("ListTasksRequest", "state", json!(TASK_STATES)),
        ("EnvoyFilter", "status", with_unset(&STATUSES)),
        ("ListEnvoysRequest", "sort", json!(sort_keys())),
        (
            "CreateTokenRequest",
            "role",
            json!(["admin", "operator", "viewer", "enroll"]),
        ),
        (
            "TokenInfo",
            "role",
            json!(["admin", "operator", "viewer", "enroll"]),
        ),
        ("BundleKeyInfo", "state", json!(["signing", "trusted"])),
        (
            "SpokeInfo",
            "state",
            json!(["active", "draining", "removed"]),
        ),
    ];
    for (schema, field, values) in fields {
        if let Some(property) = property(schemas, schema, field) {
            property.insert("enum".into(), values);
        }
    }
    for (schema, field, pattern) in [
        ("RevokeEnvoyRequest", "envoy_id", ENVOY_ID),
        ("ReassignEnvoyRequest", "envoy_id", ENVOY_ID),
        ("EnvoyRef", "envoy_id", ENVOY_ID),
        ("TaskRef", "task_id", TASK_ID),
        ("TaskResultsRequest", "task_id", TASK_ID),
        ("EnvoyFilter", "hostname", HOSTNAME_GLOB),
    ] {
        if let Some(property) = property(schemas, schema, field) {
            property.insert("pattern".into(), json!(pattern));
        }
    }
}

/// A property of a component schema, if both exist.
fn property<'a>(
    schemas: &'a mut Value,
    schema: &str,
    field: &str,
) -> Option<&'a mut serde_json::Map<String, Value>> {
    schemas
        .get_mut(schema)?
        .get_mut("properties")?
        .get_mut(field)?
        .as_object_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_documents_its_refusals() {
        let doc = finish(utoipa::openapi::OpenApiBuilder::new().build());
        assert!(doc["paths"].is_object() || doc["paths"].is_null());
        let refused = refusals("post", "/api/v1/envoys/{envoy_id}/reassign", false);
        for status in ["400", "401", "403", "404", "409", "412", "503", "504"] {
            assert!(refused.iter().any(|(s, _)| *s == status), "{status}");
        }
        let read = refusals("get", "/api/v1/status", false);
        assert!(!read.iter().any(|(s, _)| *s == "403"), "a viewer read");
        assert!(
            refusals("get", "/api/v1/envoys", true)
                .iter()
                .any(|(s, _)| *s == "404")
        );
    }
}
