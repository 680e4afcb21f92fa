//! An ingest settings file: loaded and validated, or refused naming the key, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(settings) = auscult_settings::load_toml::<auscult_ingest::Settings>(text) {
        let _ = settings.validate();
        let _ = settings.memory_bound_bytes();
    }
});
