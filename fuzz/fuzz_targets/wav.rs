//! A WAV file handed to `auscult train`, `evaluate`, `score`, `enroll` or `simulate`: decoded to mono within
//! the limits, or refused with an error naming the file.
#![no_main]

use std::path::Path;

use auscult_audio::{AudioLimits, ChannelChoice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for channel in [ChannelChoice::MixDown, ChannelChoice::Index(1)] {
        let _ = auscult_audio::parse_wav(
            std::io::Cursor::new(data),
            Path::new("fuzz.wav"),
            channel,
            AudioLimits::default(),
        );
    }
});
