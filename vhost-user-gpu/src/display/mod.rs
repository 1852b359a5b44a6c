//! Display sinks.
