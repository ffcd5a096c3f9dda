//! The lock table.
