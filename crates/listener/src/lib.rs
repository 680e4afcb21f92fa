//! The listener: turns stored frames into verdicts. It wakes on PostgreSQL notifications (or its
//! sweep timer), claims analysis jobs under a lease, scores them on the analysis replicas, stores
//! each verdict in the transaction that completes its job, and raises alerts; alongside, it sends
//! alert webhooks and watches the sensors' health. Any number of replicas run side by side.

pub mod health;
pub mod replicas;
mod service;
pub mod settings;
pub mod wakeup;
pub mod webhooks;
pub mod worker;

pub use service::{HEALTH_SERVICE, ListenerError, Listeners, run};
pub use settings::{InvalidSetting, Settings};
