//! For unit tests only: whether the real weights and photos in `../shared` are here.

use std::path::{Path, PathBuf};

/// `../shared`, beside the project.
pub(crate) fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// Whether `../shared/data` and `../shared/weights` are here. When they are not, a test that
/// needs them is skipped, saying so, unless `TANUKI_REQUIRE_SHARED_DATA=1` (which `.ci/run`
/// sets) makes their absence a failure.
pub(crate) fn shared_present() -> bool {
    let shared = shared_dir();
    let present = shared.join("data/cats_and_dogs_filtered").is_dir() && shared.join("weights").is_dir();
    if !present {
        let required = std::env::var("TANUKI_REQUIRE_SHARED_DATA").is_ok_and(|v| v == "1");
        assert!(!required, "{} is missing and TANUKI_REQUIRE_SHARED_DATA=1", shared.display());
        eprintln!("skipping: this test needs {}/data and {}/weights", shared.display(), shared.display());
    }
    present
}

/// First line of a test that reads `../shared`: returns early when it is absent.
macro_rules! require_shared_data {
    () => {
        if !crate::test_support::shared_present() {
            return;
        }
    };
}
pub(crate) use require_shared_data;
