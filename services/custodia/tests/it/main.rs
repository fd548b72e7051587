//! Tests of the real `custodia` binary as a process: crash safety under kill -9.

mod consent_crash;
mod crash;
mod dsar_crash;
