//! Audio read back from the database as FLAC: whatever the bytes, decoding returns the samples or an error,
//! never a panic or an allocation the header talked it into.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&shape, flac)) = data.split_first() else {
        return;
    };
    let channels = u16::from(shape % 4 + 1);
    let _ = auscult_frame::flac::decode_to_pcm_s16le(flac, channels, 16_000);
});
