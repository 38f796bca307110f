//! The bounce parser (`poolrelay classify --message`, and the reader of bounces coming back) on
//! arbitrary bytes: RFC 3464 reports, free text, SES JSON, broken MIME. Besides "no panic": every
//! report it finds has a classification whose rule exists, and the same input parses the same
//! way twice (no hidden state).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use poolrelay_parsers::outcome::classify::Classifier;
use poolrelay_parsers::reputation::bounce;

static CLASSIFIER: LazyLock<Classifier> = LazyLock::new(Classifier::builtin);

fuzz_target!(|data: &[u8]| {
    let first = bounce::parse(data, &CLASSIFIER);
    for r in &first.reports {
        assert!(!r.classification.rule.is_empty(), "report without a rule");
    }
    let again = bounce::parse(data, &CLASSIFIER);
    assert_eq!(
        serde_json::to_string(&first.reports).ok(),
        serde_json::to_string(&again.reports).ok(),
        "same input, different result"
    );
});
