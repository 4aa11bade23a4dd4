//! observer's daemon, as a library so the integration tests exercise the same code the
//! binary runs (the layout table, the ELF inspector, the kernel loader).

pub mod arch;
pub mod btf;
pub mod client;
pub mod config;
pub mod container;
pub mod elf;
pub mod ffmpeg;
pub mod fuzzing;
pub mod gpu;
pub mod io;
pub mod kernel;
pub mod kubernetes;
pub mod logs;
pub mod metrics;
pub mod otlp;
pub mod privilege;
pub mod procfs;
pub mod redact;
pub mod server;
pub mod state;
pub mod streams;
pub mod top;
pub mod tracker;
pub mod web;
