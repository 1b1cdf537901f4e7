//! Shared pieces of the task binaries (data loading, logging).
