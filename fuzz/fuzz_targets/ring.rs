//! A shared-memory ring under a hostile peer: arbitrary pushes, reads,
//! peeks and scribbles on the positions and records. Our side must never
//! panic or touch memory outside the region; a broken rule is
//! ERROR_BAD_PIPE (asserted inside `hostile_ring`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| npipe::fuzzing::hostile_ring(data));
