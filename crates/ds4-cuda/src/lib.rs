//! CUDA backend for DeepSeek V4 Flash on one Hopper GPU (sm_90a), on cudarc's driver API.
//!
//! Owns: device memory for the weights (uploaded once, blocks kept in their GGUF layout, or
//! generated in place for benchmarks), the session's KV state on the GPU, the kernels
//! (`kernels/*.cu`, compiled by build.rs with a pinned nvcc and embedded) and the decode step.
//! Refuses: sampling policy, tokens and sessions (ds4-engine).
//!
//! Design decision: one decode token is one CUDA graph. Every kernel reads the token and position
//! from a small device buffer instead of taking them as launch arguments, so the graph captured
//! for the first token replays for all later ones: per token the host writes 8 bytes, launches
//! the graph and reads the logits back once, with no sync inside the token. The kernels compute
//! with f32 activations (the model's own semantics, spec/model.md §3.13), so they are compared
//! with the CPU reference statistically, and each kernel against host references on random data.

mod backend;
pub mod blocks;
pub mod device;
pub mod experts;
pub mod forward;
pub mod knobs;
pub mod launch;
pub mod prefill;
pub mod weights;

/// The embedded kernel images (`$OUT_DIR/kernels.rs`, written by build.rs).
pub(crate) mod kernels {
    // A module's fatbin stays unused until its host side lands (build.rs compiles every .cu).
    #![allow(dead_code)]
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
    /// `(module name, fatbin)`; `None` when the crate was built without nvcc.
    pub const MODULES: [(&str, Option<&[u8]>); 3] =
        [("gemv", GEMV), ("ops", OPS), ("attention", ATTENTION)];
}

pub use backend::CudaBackend;
pub use device::{DevBuf, Device};
pub use weights::{DevWeights, SyntheticQuant};

/// Whether this build embeds compiled kernels (false when nvcc was missing at build time).
pub fn kernels_built() -> bool {
    // prefill and experts load their own modules (src/prefill.rs, src/experts.rs)
    kernels::MODULES.iter().all(|(_, m)| m.is_some())
        && kernels::PREFILL.is_some()
        && kernels::EXPERTS.is_some()
}

/// Errors of the CUDA backend (STYLE §2.6).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no CUDA driver found (libcuda is not installed): no CUDA device is present")]
    NoDriver,
    #[error("the CUDA driver reports no GPU: no CUDA device is present")]
    NoDevice,
    #[error("ds4-cuda was built without nvcc, so it has no kernels (set DS4_NVCC or install the pinned nvidia-cuda-nvcc wheel and rebuild)")]
    NoKernels,
    #[error("kernel {0} is missing from the embedded modules")]
    MissingKernel(String),
    #[error("CUDA error in {op}: {msg}")]
    Driver { op: String, msg: String },
    #[error("out of GPU memory allocating {bytes} bytes")]
    OutOfMemory { bytes: usize },
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    pub(crate) fn driver(op: &str, e: cudarc::driver::DriverError) -> Error {
        Error::Driver {
            op: op.to_string(),
            msg: format!("{e:?}"),
        }
    }
}

impl From<Error> for ds4_model::BackendError {
    fn from(e: Error) -> Self {
        ds4_model::BackendError::Device(e.to_string())
    }
}
