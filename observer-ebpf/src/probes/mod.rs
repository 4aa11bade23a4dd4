pub mod codec;
pub mod process;
