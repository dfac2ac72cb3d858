//! Pipe names: never panics; what parses is at most 256 characters, maps to a
//! short socket file name, and its printed form parses to the same name.
#![no_main]
use libfuzzer_sys::fuzz_target;
use npipe::PipeName;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(name) = PipeName::parse(text) {
        assert!(name.name().chars().count() <= 256);
        assert!(name.file_name().len() <= 64);
        let again = PipeName::parse(&name.to_string()).expect("printed form parses");
        assert_eq!(again, name);
    }
});
