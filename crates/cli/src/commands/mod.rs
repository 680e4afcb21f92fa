//! One module per subcommand.

pub mod bench;
pub mod chaos;
pub mod clip;
pub mod cluster;
pub mod demo;
pub mod device;
pub mod elastic;
pub mod enroll;
pub mod evaluate;
pub mod health;
pub mod kibana;
pub mod migrate;
pub mod model;
pub mod recordings;
pub mod retention;
pub mod score;
pub mod setup;
pub mod simulate;
pub mod train;
