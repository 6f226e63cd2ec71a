//! The error type of the `shmq` tool's commands and of the bench workloads: any error, carried
//! with its message to `main`, which prints it. The bottom layer: it depends on nothing here.

/// Any error of a command or a workload, with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Result of a command or a workload.
pub type BoxResult<T> = Result<T, BoxError>;
