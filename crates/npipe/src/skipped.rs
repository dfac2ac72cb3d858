//! How a unit test says it cannot run here (on Linux, or under Wine):
//! loudly, on standard error, and into the file `NPIPE_SKIPPED_LOG` names,
//! which `.ci/run` prints at its end, so that a skip never passes as a
//! success unseen. The integration tests and the tool's tests are other
//! crates: they take this file in with `#[path]`.

/// Says that a test, or a part of one, did not run here, and why.
pub fn skipped(why: &str) {
    eprintln!("SKIPPED LOUDLY: {why}");
    if let Some(log) = std::env::var_os("NPIPE_SKIPPED_LOG") {
        use std::io::Write;
        let line = format!("{}\n", why.replace('\n', " "));
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }
}
