//! The store seen through roles: each part of the relay imports the trait of what it does with
//! the store and sees only those operations. `Store` implements them all, over either backend.

mod console;
mod erasure;
mod ingest;
mod quarantine;
mod queue;
mod upkeep;

pub use console::ConsoleStore;
pub use erasure::ErasureStore;
pub use ingest::IngestStore;
pub use quarantine::QuarantineStore;
pub use queue::QueueStore;
pub use upkeep::UpkeepStore;
