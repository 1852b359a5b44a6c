//! The device core: typed commands in, state machine, typed responses out.

pub mod ports;
