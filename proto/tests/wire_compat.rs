//! Guards the wire contract: during a rollout, nodes still on an old image run
//! the old agent, so a change to the `.proto` files must never break what an
//! older peer sends or expects.
//!
//! `proto/wire-snapshot.txt` is the committed shape of the contract. The test
//! fails when the current contract drops or retypes anything the snapshot has
//! (a wire-incompatible change), and when the snapshot is stale (so additions
//! are reviewed). After a compatible change, refresh the snapshot with
//! `DFLEET_BLESS_WIRE=1 cargo test -p dfleet-proto --test wire_compat`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

/// A field as the wire sees it: (name, type, label, message or enum type name).
type FieldShape = (String, String, String, String);

/// The parts of a contract that decide wire compatibility.
#[derive(Debug, Default, Clone, PartialEq)]
struct Shape {
    /// message name → field number → (field name, type, label, type name)
    messages: BTreeMap<String, BTreeMap<i32, FieldShape>>,
    /// message name → reserved field numbers (ranges, end exclusive)
    reserved: BTreeMap<String, Vec<(i32, i32)>>,
    /// enum name → number → value name
    enums: BTreeMap<String, BTreeMap<i32, String>>,
    /// service.method → "stream? In -> stream? Out"
    rpcs: BTreeMap<String, String>,
}

fn collect_message(prefix: &str, m: &DescriptorProto, shape: &mut Shape) {
    let name = format!("{prefix}.{}", m.name());
    let mut fields = BTreeMap::new();
    for f in &m.field {
        let ty = format!("{:?}", f.r#type());
        let label = match f.label() {
            Label::Repeated => "repeated",
            // proto3 `optional` and plain singular fields share the wire form.
            Label::Optional | Label::Required => "singular",
        };
        let type_name = match f.r#type() {
            Type::Message | Type::Enum => f.type_name().to_string(),
            _ => String::new(),
        };
        fields.insert(
            f.number(),
            (f.name().to_string(), ty, label.to_string(), type_name),
        );
    }
    shape.messages.insert(name.clone(), fields);
    shape.reserved.insert(
        name.clone(),
        m.reserved_range
            .iter()
            .map(|r| (r.start(), r.end()))
            .collect(),
    );
    for nested in &m.nested_type {
        collect_message(&name, nested, shape);
    }
    for e in &m.enum_type {
        shape.enums.insert(
            format!("{name}.{}", e.name()),
            e.value
                .iter()
                .map(|v| (v.number(), v.name().to_string()))
                .collect(),
        );
    }
}

fn shape_of(fds: &FileDescriptorSet) -> Shape {
    let mut shape = Shape::default();
    for file in &fds.file {
        let prefix = format!(".{}", file.package());
        for m in &file.message_type {
            collect_message(&prefix, m, &mut shape);
        }
        for e in &file.enum_type {
            shape.enums.insert(
                format!("{prefix}.{}", e.name()),
                e.value
                    .iter()
                    .map(|v| (v.number(), v.name().to_string()))
                    .collect(),
            );
        }
        for s in &file.service {
            for m in &s.method {
                let stream = |b: bool| if b { "stream " } else { "" };
                shape.rpcs.insert(
                    format!("{prefix}.{}.{}", s.name(), m.name()),
                    format!(
                        "{}{} -> {}{}",
                        stream(m.client_streaming()),
                        m.input_type(),
                        stream(m.server_streaming()),
                        m.output_type()
                    ),
                );
            }
        }
    }
    shape
}

fn render(shape: &Shape) -> String {
    let mut out = String::from(
        "# dfleet wire contract snapshot; see proto/tests/wire_compat.rs. Do not edit by hand.\n",
    );
    for (name, fields) in &shape.messages {
        out.push_str(&format!("message {name}\n"));
        for (n, (fname, ty, label, type_name)) in fields {
            let line = format!("  field {n} {fname} {ty} {label} {type_name}");
            out.push_str(line.trim_end());
            out.push('\n');
        }
        for (start, end) in &shape.reserved[name] {
            out.push_str(&format!("  reserved {start} {end}\n"));
        }
    }
    for (name, values) in &shape.enums {
        out.push_str(&format!("enum {name}\n"));
        for (n, v) in values {
            out.push_str(&format!("  value {n} {v}\n"));
        }
    }
    for (name, sig) in &shape.rpcs {
        out.push_str(&format!("rpc {name} {sig}\n"));
    }
    out
}

fn parse(text: &str) -> Shape {
    let mut shape = Shape::default();
    let mut current = String::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["message", name] => {
                current = name.to_string();
                shape.messages.entry(current.clone()).or_default();
                shape.reserved.entry(current.clone()).or_default();
            }
            ["field", n, name, ty, label, rest @ ..] => {
                shape.messages.get_mut(&current).unwrap().insert(
                    n.parse().unwrap(),
                    (
                        name.to_string(),
                        ty.to_string(),
                        label.to_string(),
                        rest.first().unwrap_or(&"").to_string(),
                    ),
                );
            }
            ["reserved", start, end] => shape
                .reserved
                .get_mut(&current)
                .unwrap()
                .push((start.parse().unwrap(), end.parse().unwrap())),
            ["enum", name] => {
                current = name.to_string();
                shape.enums.entry(current.clone()).or_default();
            }
            ["value", n, name] => {
                shape
                    .enums
                    .get_mut(&current)
                    .unwrap()
                    .insert(n.parse().unwrap(), name.to_string());
            }
            ["rpc", name, sig @ ..] => {
                shape.rpcs.insert(name.to_string(), sig.join(" "));
            }
            _ => panic!("unreadable snapshot line {line:?}"),
        }
    }
    shape
}

/// Every way `new` breaks a peer that speaks `old`.
fn incompatibilities(old: &Shape, new: &Shape) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, fields) in &old.messages {
        let Some(new_fields) = new.messages.get(name) else {
            problems.push(format!("message {name} was removed"));
            continue;
        };
        let reserved = new.reserved.get(name).cloned().unwrap_or_default();
        for (n, (fname, ty, label, type_name)) in fields {
            match new_fields.get(n) {
                None if reserved.iter().any(|(s, e)| (*s..*e).contains(n)) => {}
                None => problems.push(format!(
                    "{name} field {n} ({fname}) was removed without reserving its number"
                )),
                Some((_, nty, nlabel, ntype_name)) => {
                    if (nty, nlabel, ntype_name) != (ty, label, type_name) {
                        problems.push(format!(
                            "{name} field {n} ({fname}) changed from {label} {ty} {type_name} to {nlabel} {nty} {ntype_name}"
                        ));
                    }
                }
            }
        }
    }
    for (name, values) in &old.enums {
        let Some(new_values) = new.enums.get(name) else {
            problems.push(format!("enum {name} was removed"));
            continue;
        };
        for (n, v) in values {
            if !new_values.contains_key(n) {
                problems.push(format!("enum {name} value {n} ({v}) was removed"));
            }
        }
    }
    for (name, sig) in &old.rpcs {
        match new.rpcs.get(name) {
            None => problems.push(format!("rpc {name} was removed")),
            Some(nsig) if nsig != sig => {
                problems.push(format!("rpc {name} changed from {sig} to {nsig}"))
            }
            Some(_) => {}
        }
    }
    problems
}

fn current() -> Shape {
    shape_of(&FileDescriptorSet::decode(dfleet_proto::DESCRIPTOR_SET).unwrap())
}

fn snapshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("wire-snapshot.txt")
}

#[test]
fn contract_stays_wire_compatible_with_the_snapshot() {
    let now = current();
    let path = snapshot_path();
    if std::env::var_os("DFLEET_BLESS_WIRE").is_some() {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let problems = incompatibilities(&parse(&text), &now);
            assert!(
                problems.is_empty(),
                "refusing to bless a wire-incompatible change:\n{}",
                problems.join("\n")
            );
        }
        std::fs::write(&path, render(&now)).unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let old = parse(&text);
    let problems = incompatibilities(&old, &now);
    assert!(
        problems.is_empty(),
        "wire-incompatible change to proto/dfleet/v1 (older agents would break):\n{}",
        problems.join("\n")
    );
    assert_eq!(
        text,
        render(&now),
        "proto/wire-snapshot.txt is stale: the change is compatible; refresh it with \
         DFLEET_BLESS_WIRE=1 cargo test -p dfleet-proto --test wire_compat"
    );
}

#[test]
fn snapshot_text_round_trips() {
    let now = current();
    assert_eq!(parse(&render(&now)), now);
}

#[test]
fn removing_a_field_is_caught() {
    let old = current();
    let mut new = old.clone();
    new.messages
        .get_mut(".dfleet.v1.Hello")
        .unwrap()
        .remove(&2)
        .unwrap();
    let problems = incompatibilities(&old, &new);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("Hello field 2 (mac)"), "{problems:?}");

    // Reserving the number makes the removal compatible.
    new.reserved
        .get_mut(".dfleet.v1.Hello")
        .unwrap()
        .push((2, 3));
    assert!(incompatibilities(&old, &new).is_empty());
}

#[test]
fn retyping_a_field_enum_value_or_rpc_is_caught() {
    let old = current();
    let mut new = old.clone();
    new.messages
        .get_mut(".dfleet.v1.Report")
        .unwrap()
        .get_mut(&1)
        .unwrap()
        .1 = "String".into();
    new.enums
        .get_mut(".dfleet.v1.KeyOrigin")
        .unwrap()
        .remove(&1)
        .unwrap();
    new.rpcs.insert(
        ".dfleet.v1.Agent.Connect".into(),
        "stream .dfleet.v1.AgentMessage -> .dfleet.v1.CoordinatorMessage".into(),
    );
    let problems = incompatibilities(&old, &new);
    assert_eq!(problems.len(), 3, "{problems:?}");
}

#[test]
fn adding_fields_is_compatible() {
    let old = current();
    let mut new = old.clone();
    new.messages.get_mut(".dfleet.v1.Hello").unwrap().insert(
        99,
        (
            "extra".into(),
            "String".into(),
            "singular".into(),
            String::new(),
        ),
    );
    assert!(incompatibilities(&old, &new).is_empty());
}
