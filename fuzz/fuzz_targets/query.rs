//! The admin API's query parser: a REST query string turned into a listing request, its
//! filter and sort checked as every spoke checks them, and evaluated against a few
//! envoys. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vigo_common::fleet_query::{Filter, Sort, listing_from_query};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for listing in [true, false] {
        let Ok(req) = listing_from_query(Some(text), listing) else {
            continue;
        };
        let _ = Sort::parse(&req.sort);
        if let Ok(filter) = Filter::parse(req.filter.as_ref()) {
            for (host, os) in [("web-1", "debian"), ("DB-2.example.com", "12.5")] {
                let _ = filter.matches_hostname(host);
                let _ = filter.matches_traits(|k| match k {
                    "os" => Some(os),
                    "hostname" => Some(host),
                    _ => None,
                });
            }
        }
    }
});
