//! The OpenAPI 3.1 document of the Connect side, derived from the descriptor
//! set like the translation itself: one path per RPC (`POST`, and `GET` for the
//! methods without side effects), request and response schemas in the proto3
//! JSON mapping, the proto comments as descriptions, each RPC's scope
//! (`x-custodia-scope`, also in the description) and the bearer scheme.
//! Served at `GET /openapi.json` and printed by `custodia openapi`.

use std::collections::{BTreeMap, HashMap};

use prost_reflect::{
    Cardinality, DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor,
};
use serde_json::{Value, json};

use super::methods::{Method, MethodTable};
use crate::auth::scopes::{Requirement, ScopeTable};

/// Leading comments of every element of the pool's files, by (file, path).
struct Comments(HashMap<(String, Vec<i32>), String>);

impl Comments {
    fn of(pool: &DescriptorPool) -> Self {
        let mut map = HashMap::new();
        for file in pool.files() {
            let proto = file.file_descriptor_proto();
            for loc in proto
                .source_code_info
                .as_ref()
                .map(|i| i.location.as_slice())
                .unwrap_or_default()
            {
                if let Some(text) = &loc.leading_comments {
                    let text = text
                        .lines()
                        .map(str::trim)
                        .collect::<Vec<_>>()
                        .join("\n")
                        .trim()
                        .to_string();
                    if !text.is_empty() {
                        map.insert((file.name().to_string(), loc.path.clone()), text);
                    }
                }
            }
        }
        Self(map)
    }

    fn get(&self, file: &str, path: &[i32]) -> Option<&str> {
        self.0
            .get(&(file.to_string(), path.to_vec()))
            .map(String::as_str)
    }
}

/// Schemas of messages and enums, by full name, built on demand.
struct Schemas<'a> {
    comments: &'a Comments,
    built: BTreeMap<String, Value>,
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

impl Schemas<'_> {
    fn message(&mut self, m: &MessageDescriptor) -> Value {
        if let Some(known) = well_known(m.full_name()) {
            return known;
        }
        let name = m.full_name().to_string();
        if !self.built.contains_key(&name) {
            // Placed first, so a recursive message refers to itself.
            self.built.insert(name.clone(), Value::Null);
            let mut properties = serde_json::Map::new();
            for field in m.fields() {
                let mut schema = self.field(&field);
                let file = field.parent_file();
                if let Some(text) = self.comments.get(file.name(), field.path())
                    && let Value::Object(map) = &mut schema
                {
                    let text = match field.containing_oneof() {
                        Some(o) => format!("{text}\n\n(One of `{}`.)", o.name()),
                        None => text.to_string(),
                    };
                    // Beside a $ref too: OpenAPI 3.1 allows siblings of $ref.
                    map.insert("description".into(), text.into());
                }
                properties.insert(field.json_name().to_string(), schema);
            }
            let mut schema = json!({
                "type": "object",
                "properties": properties,
                "additionalProperties": false,
            });
            if let Some(text) = self.comments.get(m.parent_file().name(), m.path()) {
                schema["description"] = text.into();
            }
            self.built.insert(name.clone(), schema);
        }
        reference(&name)
    }

    fn enumeration(&mut self, e: &EnumDescriptor) -> Value {
        let name = e.full_name().to_string();
        if !self.built.contains_key(&name) {
            let values: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
            let mut schema = json!({ "type": "string", "enum": values });
            if let Some(text) = self.comments.get(e.parent_file().name(), e.path()) {
                schema["description"] = text.into();
            }
            self.built.insert(name.clone(), schema);
        }
        reference(&name)
    }

    fn field(&mut self, f: &FieldDescriptor) -> Value {
        if f.is_map() {
            let Kind::Message(entry) = f.kind() else {
                return json!({ "type": "object" });
            };
            let value = entry.map_entry_value_field();
            return json!({ "type": "object", "additionalProperties": self.single(&value) });
        }
        let one = self.single(f);
        if f.cardinality() == Cardinality::Repeated {
            json!({ "type": "array", "items": one })
        } else {
            one
        }
    }

    fn single(&mut self, f: &FieldDescriptor) -> Value {
        match f.kind() {
            Kind::Double | Kind::Float => json!({ "type": "number" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "format": "int32", "minimum": 0 })
            }
            // 64-bit integers are JSON strings (JSON numbers lose precision), and
            // numbers are accepted.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
                json!({ "type": ["string", "integer"], "format": "int64" })
            }
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Kind::Message(m) => self.message(&m),
            Kind::Enum(e) => self.enumeration(&e),
        }
    }
}

/// The proto3 JSON form of the well-known types.
fn well_known(name: &str) -> Option<Value> {
    Some(match name {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => {
            json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$" })
        }
        "google.protobuf.FieldMask" => json!({
            "type": "string",
            "description": "Field paths, comma-separated, in lowerCamelCase."
        }),
        "google.protobuf.Struct" => json!({ "type": "object" }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({ "type": "array" }),
        "google.protobuf.Empty" => json!({ "type": "object" }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": { "@type": { "type": "string" } },
            "required": ["@type"]
        }),
        _ => return None,
    })
}

/// The Connect error object.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "A Connect error (connectrpc.com/docs/protocol). `details` carry the \
            google.rpc details custodia sends (ErrorInfo, BadRequest, RetryInfo): protobuf \
            bytes in `value` (base64) and the same as JSON in `debug`.",
        "properties": {
            "code": {
                "type": "string",
                "enum": ["canceled", "unknown", "invalid_argument", "deadline_exceeded",
                    "not_found", "already_exists", "permission_denied", "resource_exhausted",
                    "failed_precondition", "aborted", "out_of_range", "unimplemented",
                    "internal", "unavailable", "data_loss", "unauthenticated"]
            },
            "message": { "type": "string" },
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "type": { "type": "string" },
                        "value": { "type": "string", "contentEncoding": "base64" },
                        "debug": { "type": "object" }
                    },
                    "required": ["type", "value"]
                }
            }
        },
        "required": ["code"]
    })
}

fn operation(
    m: &Method,
    scope: Option<&str>,
    comments: &Comments,
    schemas: &mut Schemas<'_>,
    get: bool,
) -> Value {
    let doc = comments
        .get(m.descriptor.parent_file().name(), m.descriptor.path())
        .unwrap_or_default()
        .to_string();
    let summary = doc
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .replace('\n', " ");
    let scope_text = match scope {
        Some(s) => format!("Scope: `{s}`."),
        None => "No scope: callable by no principal.".to_string(),
    };
    let input = schemas.message(&m.input);
    let output = schemas.message(&m.output);
    let (request_type, response_type) = if m.server_streaming {
        ("application/connect+json", "application/connect+json")
    } else {
        ("application/json", "application/json")
    };
    let operation_id = if get {
        format!("{}.{}.get", m.service, m.name)
    } else {
        format!("{}.{}", m.service, m.name)
    };
    let streamed = "A stream of enveloped messages (each `flags(1) length(4) JSON`), then an \
        end-of-stream envelope (flag 0x02) holding `{\"error\"?, \"metadata\"?}`.";
    let answer = if m.server_streaming {
        streamed
    } else {
        "The response message."
    };
    let mut op = json!({
        "operationId": operation_id,
        "tags": [m.service],
        "summary": summary,
        "description": format!("{doc}\n\n{scope_text}"),
        "x-custodia-scope": scope,
        "security": [{ "bearer": [] }],
        "parameters": [{
            "name": "Connect-Protocol-Version",
            "in": "header",
            "required": false,
            "schema": { "type": "string", "enum": ["1"] }
        }],
        "responses": {
            "200": {
                "description": answer,
                "content": { response_type: { "schema": output } }
            },
            "default": {
                "description": "A Connect error.",
                "content": { "application/json": { "schema": reference("connect.Error") } }
            }
        }
    });
    if get {
        op["parameters"].as_array_mut().expect("array").extend([
            json!({ "name": "encoding", "in": "query", "required": true,
                    "schema": { "type": "string", "enum": ["json", "proto"] } }),
            json!({ "name": "message", "in": "query", "required": true,
                    "description": "The request message: JSON, or with base64=1 the protobuf bytes in base64url.",
                    "schema": { "type": "string" } }),
            json!({ "name": "base64", "in": "query", "required": false,
                    "schema": { "type": "string", "enum": ["1"] } }),
        ]);
    } else {
        op["requestBody"] = json!({
            "required": true,
            "content": { request_type: { "schema": input } }
        });
    }
    op
}

/// The OpenAPI 3.1 document of `methods`, their scopes from `scopes`.
pub fn document(methods: &MethodTable, scopes: &ScopeTable, version: &str) -> Value {
    let pool = super::methods::pool();
    let comments = Comments::of(pool);
    let mut schemas = Schemas {
        comments: &comments,
        built: BTreeMap::new(),
    };
    let mut paths = serde_json::Map::new();
    for m in methods.all() {
        let scope = match scopes.requirement(&m.path) {
            Requirement::Scope(s) => Some(s.to_string()),
            _ => None,
        };
        let mut item = serde_json::Map::new();
        item.insert(
            "post".into(),
            operation(m, scope.as_deref(), &comments, &mut schemas, false),
        );
        if m.no_side_effects && !m.server_streaming {
            item.insert(
                "get".into(),
                operation(m, scope.as_deref(), &comments, &mut schemas, true),
            );
        }
        paths.insert(m.path.clone(), Value::Object(item));
    }
    let mut components: serde_json::Map<String, Value> = schemas.built.into_iter().collect();
    components.insert("connect.Error".into(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "custodia",
            "version": version,
            "description": "GDPR privacy operations for universities and schools: consent, \
                data-subject requests, breaches and a tamper-evident access log. Every RPC is \
                served over gRPC, gRPC-Web and the Connect protocol; this document describes \
                the Connect JSON form: `POST /{package}.{Service}/{Method}` with \
                `Content-Type: application/json` and `Authorization: Bearer <token>`.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" }
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer",
                            "description": "A principal's token (see `custodia auth scopes`)." }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_a_path_with_schemas_scope_and_comments() {
        let methods = MethodTable::new(
            super::super::methods::pool(),
            &["custodia.consent.v1.ConsentService"],
        );
        let scopes = ScopeTable::from_descriptor_set(custodia_proto::FILE_DESCRIPTOR_SET).unwrap();
        let doc = document(&methods, &scopes, "0.1.0");
        let check = &doc["paths"]["/custodia.consent.v1.ConsentService/CheckConsent"];
        assert_eq!(check["post"]["x-custodia-scope"], "consent.check");
        assert!(check["get"].is_object(), "a read is also a GET");
        assert!(doc["paths"]["/custodia.consent.v1.ConsentService/RecordConsent"]["get"].is_null());
        let request = &doc["components"]["schemas"]["custodia.consent.v1.CheckConsentRequest"];
        assert!(request["properties"]["subject"]["$ref"].is_string());
        assert!(
            !check["post"]["summary"].as_str().unwrap().is_empty(),
            "the proto comment describes it"
        );
        assert_eq!(
            doc["components"]["schemas"]["custodia.consent.v1.ConsentState"]["type"],
            "string"
        );
    }
}
