pub mod codec;
pub mod io;
pub mod log;
pub mod net;
pub mod process;
