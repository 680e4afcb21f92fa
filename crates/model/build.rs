//! Builds the shipped model into the library when `shipped/auscult.model` exists, so the
//! commands work from any directory without a model path.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(shipped_model)");
    // The folder's timestamp changes when the model file appears or is replaced.
    println!("cargo::rerun-if-changed=shipped");
    println!("cargo::rerun-if-changed=shipped/auscult.model");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    if std::path::Path::new(&manifest_dir)
        .join("shipped/auscult.model")
        .is_file()
    {
        println!("cargo::rustc-cfg=shipped_model");
    }
}
