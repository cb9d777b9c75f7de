//! Conditions (`when:`) as the envoy reads them from a bundle: any text is parsed and
//! type-checked, and what passes is evaluated against a few machines' facts. Nothing may
//! panic or recurse without bound; a condition that passes the check evaluates to a
//! boolean or a named error, never to another type.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use vigo_common::policy::when::Condition;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(condition) = Condition::parse(text) else {
        return;
    };
    let vars = BTreeMap::from([("tier".to_string(), "prod".to_string())]);
    for (os, cpus) in [("debian", "4"), ("", ""), ("rocky", "not a number")] {
        let traits = BTreeMap::from([
            ("os".to_string(), os.to_string()),
            ("cpus".to_string(), cpus.to_string()),
        ]);
        if let Err(e) = condition.eval("web-1", &traits, &vars) {
            assert!(!e.contains("not a boolean"), "{text:?} passed the check: {e}");
        }
    }
    let _ = condition.vars();
});
