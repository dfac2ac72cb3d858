//! The security descriptor's text form (and SDDL subset): never panics, and
//! what parses prints back to text that parses to the same descriptor.
#![no_main]
use libfuzzer_sys::fuzz_target;
use npipe::SecurityDescriptor;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(sd) = text.parse::<SecurityDescriptor>() {
        let printed = sd.to_string();
        let again: SecurityDescriptor = printed.parse().expect("printed form parses");
        assert_eq!(again, sd);
    }
});
