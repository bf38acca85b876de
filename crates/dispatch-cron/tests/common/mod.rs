//! What the cron property tests share.

use proptest::prelude::ProptestConfig;

/// `cases` cases, or `PROPTEST_CASES` when set, for a longer run.
pub(crate) fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig::with_cases(cases)
}
