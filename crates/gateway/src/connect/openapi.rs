//! The public API as an OpenAPI 3.1 document, served at `GET /openapi.json`:
//! the Connect calls as HTTP operations, for tools that read OpenAPI
//! (Postman, Swagger UI, client generators, API gateways).
//!
//! Generated once per process from the same embedded descriptors the JSON
//! mapping uses, so it cannot drift from what the gateway accepts: every
//! unary method is `POST /discovery.v1.Discovery/<Method>` with its request
//! and response schemas (the canonical proto3 JSON mapping: camelCase
//! names, enums by name, 64-bit integers as strings, bytes as base64) and
//! the protos' comments as descriptions; the server streams are listed with
//! `application/connect+json` (enveloped messages, which OpenAPI cannot
//! describe: said in their description); the client stream is left out.

use std::collections::{BTreeMap, VecDeque};
use std::sync::OnceLock;

use bytes::Bytes;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use crate::routes::{self, Route};

/// Where it is served.
pub const PATH: &str = "/openapi.json";

/// `GET /openapi.json`: public (it is what the repository's protos say),
/// the same bytes every time, readable from any origin (API tools run in
/// browsers).
pub fn serve(routes: &mut tonic::service::Routes) {
    let router = std::mem::take(routes.axum_router_mut());
    *routes.axum_router_mut() = router.route(
        PATH,
        axum::routing::get(|| async {
            (
                [
                    (http::header::CONTENT_TYPE, "application/json"),
                    (http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
                    (http::header::CACHE_CONTROL, "public, max-age=300"),
                ],
                document(),
            )
        }),
    );
}

/// The document, built on first use.
pub fn document() -> Bytes {
    static DOC: OnceLock<Bytes> = OnceLock::new();
    DOC.get_or_init(|| Bytes::from(build().to_string())).clone()
}

/// The leading comment at `path` in the file that declares it.
fn comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let loc = info.location.iter().find(|l| l.path == path)?;
    let text = loc.leading_comments.as_deref()?.trim();
    (!text.is_empty()).then(|| text.lines().map(str::trim).collect::<Vec<_>>().join("\n"))
}

fn ref_to(m: &MessageDescriptor) -> Value {
    json!({ "$ref": format!("#/components/schemas/{}", m.full_name()) })
}

/// A field's value schema (one element of a list, a map's value).
fn kind_schema(kind: &Kind, queue: &mut VecDeque<MessageDescriptor>) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({ "type": "number" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({ "type": "integer", "format": "int32" })
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({ "type": "integer", "format": "int32", "minimum": 0 })
        }
        // 64-bit integers are JSON strings (a number is accepted too).
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({ "type": ["string", "integer"], "format": "int64" })
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({ "type": ["string", "integer"], "format": "uint64" })
        }
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
        Kind::Enum(e) => json!({
            "type": "string",
            "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>(),
        }),
        Kind::Message(m) => {
            queue.push_back(m.clone());
            ref_to(m)
        }
    }
}

fn field_schema(f: &FieldDescriptor, queue: &mut VecDeque<MessageDescriptor>) -> Value {
    let mut schema = if f.is_map() {
        let value = match f.kind() {
            Kind::Message(entry) => entry.map_entry_value_field().kind(),
            other => other,
        };
        json!({ "type": "object", "additionalProperties": kind_schema(&value, queue) })
    } else if f.is_list() {
        json!({ "type": "array", "items": kind_schema(&f.kind(), queue) })
    } else {
        kind_schema(&f.kind(), queue)
    };
    let mut description = comment(&f.parent_file(), f.path()).unwrap_or_default();
    if let Some(oneof) = f.containing_oneof().filter(|o| !o.is_synthetic()) {
        let others: Vec<String> = oneof
            .fields()
            .filter(|o| o.name() != f.name())
            .map(|o| o.json_name().to_string())
            .collect();
        description.push_str(&format!(
            "{}One of `{}`: not with {}.",
            if description.is_empty() { "" } else { "\n\n" },
            oneof.name(),
            others
                .iter()
                .map(|o| format!("`{o}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // (Beside a $ref too: OpenAPI 3.1 honours a $ref's siblings.)
    if !description.is_empty()
        && let Value::Object(o) = &mut schema
    {
        o.insert("description".into(), description.into());
    }
    schema
}

fn message_schema(m: &MessageDescriptor, queue: &mut VecDeque<MessageDescriptor>) -> Value {
    let properties: serde_json::Map<String, Value> = m
        .fields()
        .map(|f| (f.json_name().to_string(), field_schema(&f, queue)))
        .collect();
    let mut schema = json!({
        "type": "object",
        "properties": properties,
        // Unknown fields are refused (the mapping is strict).
        "additionalProperties": false,
    });
    if let Some(text) = comment(&m.parent_file(), m.path()) {
        schema["description"] = text.into();
    }
    schema
}

fn operation(route: &Route, queue: &mut VecDeque<MessageDescriptor>) -> Option<Value> {
    let method = super::types_of_method(route)?;
    if method.is_client_streaming() {
        return None;
    }
    let (input, output) = (method.input(), method.output());
    queue.push_back(input.clone());
    queue.push_back(output.clone());
    let mut description = comment(&method.parent_file(), method.path()).unwrap_or_default();
    let content_type = if method.is_server_streaming() {
        description.push_str(
            "\n\nA server stream (Connect streaming protocol): the request and each answer \
             are enveloped (a flags byte, a 4-byte big-endian length, the JSON message); the \
             last envelope (flags 2) carries the status. Connect clients do this for you.",
        );
        "application/connect+json"
    } else {
        "application/json"
    };
    description.push_str(&format!(
        "\n\nScope: `{}`. Upstream: {}.",
        route.scope.name(),
        route.upstream.name()
    ));
    Some(json!({
        "operationId": route.method,
        "summary": description.lines().next().unwrap_or(route.method),
        "description": description.trim(),
        "tags": [route.scope.name()],
        "parameters": [
            { "$ref": "#/components/parameters/ConnectProtocolVersion" },
            { "$ref": "#/components/parameters/ConnectTimeout" },
            { "$ref": "#/components/parameters/UserId" },
        ],
        "requestBody": {
            "required": true,
            "content": { content_type: { "schema": ref_to(&input) } },
        },
        "responses": {
            "200": {
                "description": "The answer.",
                "content": { content_type: { "schema": ref_to(&output) } },
            },
            "default": { "$ref": "#/components/responses/Error" },
        },
    }))
}

fn build() -> Value {
    let mut queue = VecDeque::new();
    let mut paths = serde_json::Map::new();
    for route in routes::ROUTES {
        if let Some(op) = operation(route, &mut queue) {
            paths.insert(
                format!(
                    "/{}/{}",
                    discovery_proto::service_names::DISCOVERY,
                    route.method
                ),
                json!({ "post": op }),
            );
        }
    }
    let mut schemas = BTreeMap::new();
    while let Some(m) = queue.pop_front() {
        if schemas.contains_key(m.full_name()) {
            continue;
        }
        let schema = message_schema(&m, &mut queue);
        schemas.insert(m.full_name().to_string(), schema);
    }
    schemas.insert(
        "connect.Error".into(),
        json!({
            "type": "object",
            "description": "A Connect error: the HTTP status follows the code.",
            "properties": {
                "code": {
                    "type": "string",
                    "enum": ["canceled", "unknown", "invalid_argument", "deadline_exceeded",
                             "not_found", "already_exists", "permission_denied",
                             "resource_exhausted", "failed_precondition", "aborted",
                             "out_of_range", "unimplemented", "internal", "unavailable",
                             "data_loss", "unauthenticated"],
                },
                "message": { "type": "string", "description": "What to do about it." },
            },
            "required": ["code"],
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "discovery",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "Face analysis and eyewear frame recommendations for shops.",
            "description": "The discovery gateway's public API over HTTP (the Connect protocol). \
                The same methods are served over gRPC and gRPC-Web; the protos in `proto/` \
                are the source of this document.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "security": [{ "apiKey": [] }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "An API key (`discovery keys create`); its scopes say which methods it may call.",
                },
            },
            "parameters": {
                "ConnectProtocolVersion": {
                    "name": "connect-protocol-version",
                    "in": "header",
                    "schema": { "type": "string", "enum": ["1"] },
                },
                "ConnectTimeout": {
                    "name": "connect-timeout-ms",
                    "in": "header",
                    "description": "The call's deadline in milliseconds.",
                    "schema": { "type": "integer", "minimum": 1 },
                },
                "UserId": {
                    "name": "x-user-id",
                    "in": "header",
                    "description": "The shopper the call is for (per-shopper limits and history).",
                    "schema": { "type": "string", "maxLength": 128 },
                },
            },
            "responses": {
                "Error": {
                    "description": "Refused or failed: 400 invalid_argument, 401 unauthenticated, 403 permission_denied, 404 not_found, 429 resource_exhausted (with retry-after), 503 unavailable, 504 deadline_exceeded.",
                    "headers": {
                        "retry-after": {
                            "description": "Seconds after which a retry may succeed.",
                            "schema": { "type": "integer" },
                        },
                    },
                    "content": {
                        "application/json": {
                            "schema": { "$ref": "#/components/schemas/connect.Error" },
                        },
                    },
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_public_call_is_an_operation_and_every_reference_resolves() {
        let doc: Value = serde_json::from_slice(&document()).unwrap();
        for route in routes::ROUTES {
            let path = format!("/discovery.v1.Discovery/{}", route.method);
            let client_stream = route.method == "IngestCatalog";
            assert_eq!(
                doc["paths"].get(&path).is_some(),
                !client_stream,
                "{path} documented unless a client stream"
            );
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 50);
        for r in all {
            let mut at = &doc;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            assert!(at.is_object(), "{r} resolves");
        }
        // The mapping's names and the protos' comments.
        let product = &doc["components"]["schemas"]["discovery.v1.Product"];
        assert!(product["properties"]["styleKeywords"]["items"]["type"] == "string");
        assert!(
            doc["components"]["schemas"]["discovery.v1.Money"]["properties"]["amountMinor"]["type"]
                [0]
                == "string"
        );
        let analyze = &doc["paths"]["/discovery.v1.Discovery/AnalyzeFace"]["post"];
        assert!(
            analyze["description"]
                .as_str()
                .unwrap()
                .contains("Scope: `public`")
        );
        let request = &doc["components"]["schemas"]["discovery.v1.AnalyzeFaceRequest"];
        assert!(
            request["properties"]["image"]["description"]
                .as_str()
                .unwrap()
                .contains("15 MiB"),
            "field comments become descriptions: {request}"
        );
        let converse = &doc["paths"]["/discovery.v1.Discovery/Converse"]["post"];
        assert!(converse["requestBody"]["content"]["application/connect+json"].is_object());
    }
}
