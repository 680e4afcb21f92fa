//! One module per subcommand.

pub mod bench;
pub mod device;
pub mod migrate;
pub mod simulate;
