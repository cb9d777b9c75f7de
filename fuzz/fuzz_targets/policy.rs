//! The policy loader: a tree of files (`path\0text\0path\0text...`, paths steered to
//! the places a tree has) parsed, validated and compiled as the hub does at publish and
//! a spoke at load. Whatever validates must compile; nothing may panic.

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

const PLACES: [&str; 4] = ["hostcrates.yaml", "roles/", "configcrates/", ""];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let mut files = BTreeMap::new();
    while let (Some(name), Some(body)) = (parts.next(), parts.next()) {
        let place = PLACES[name.len() % PLACES.len()];
        let path = match place {
            "hostcrates.yaml" => place.to_string(),
            "" => name.to_string(),
            dir => format!("{dir}{}.yaml", name.chars().take(16).collect::<String>()),
        };
        files.insert(PathBuf::from(path), body.to_string());
    }
    if let Ok(tree) = vigo_common::policy::parse_tree(&files)
        && let Ok(compiled) = vigo_common::policy::compile(&tree)
    {
        for host in ["web-1", "db-1.example.com", ""] {
            let _ = compiled.match_hostname(host);
        }
    }
});
