//! The manifest parser and resolver on arbitrary text: a parse that
//! succeeds must resolve without panicking, and every artifact it names
//! must land inside the output folder (names are file names, never paths).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use qforge::manifest::runner::artifact_path;
use qforge::manifest::{resolve, Manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/nonexistent/qforge-fuzz/manifest.yaml");
    let Ok(manifest) = Manifest::parse(text, file) else {
        return;
    };
    let env = |k: &str| (k == "QF_FUZZ").then(|| "value".to_string());
    let Ok(resolved) = resolve(manifest, file, &env, None) else {
        return;
    };
    for a in &resolved.artifacts {
        let path = artifact_path(&resolved.output, a);
        let name = path.strip_prefix(&resolved.output).expect("under the output folder");
        assert_eq!(name.components().count(), 1, "artifact {:?} is not a plain name", a.spec.name);
        assert!(!matches!(
            name.components().next(),
            Some(std::path::Component::ParentDir | std::path::Component::RootDir)
        ));
    }
});
