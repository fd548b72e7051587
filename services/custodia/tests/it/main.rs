//! Tests of the real `custodia` binary as a process: crash safety under kill -9,
//! what it checks and does at start.

mod config_check;
mod consent_crash;
mod crash;
mod dsar_crash;
mod erasure_replay;
mod start_up;
