//! The default model, trained on the recordings in the repository's data folder by the command in
//! `shipped/README.md` and built into the library.

/// The default model's bytes, if this build has one.
#[cfg(shipped_model)]
pub fn bytes() -> Option<&'static [u8]> {
    Some(include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/shipped/auscult.model"
    )))
}

/// The default model's bytes, if this build has one.
#[cfg(not(shipped_model))]
pub fn bytes() -> Option<&'static [u8]> {
    None
}
