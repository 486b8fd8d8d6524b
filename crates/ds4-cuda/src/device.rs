//! The CUDA context, one stream, the loaded kernel modules and device buffers.
//!
//! Everything goes through the driver API (`cudarc::driver::result`), loaded at run time: a binary
//! built with this crate starts on a machine without libcuda and [`Device::new`] says so.

use std::ffi::{c_void, CString};
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaStream};

use crate::Error;

/// Loads a fatbin into the current context (the caller binds it). `what` names it in errors.
pub(crate) fn load_image(what: &str, image: &[u8]) -> Result<sys::CUmodule, Error> {
    // The driver wants the image 8-byte aligned; include_bytes! guarantees only 1.
    let owned: Vec<u64> = image
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect();
    // SAFETY: `owned` holds the whole image, 8-byte aligned and alive for the call; the driver
    // parses it as a fatbin (nvcc output embedded by build.rs, or a test's build of the same file)
    // and reports a malformed one as an error.
    unsafe { result::module::load_data(owned.as_ptr() as *const c_void) }
        .map_err(|e| Error::driver(what, e))
}

/// Launches `f` on `stream`. With `pdl`, as a programmatic dependent launch: the kernel may be
/// scheduled while the previous kernel of the stream is still running (once that kernel's blocks
/// have all executed `griddepcontrol.launch_dependents`), so its launch latency and its
/// independent prologue (weight loads) overlap the previous kernel's tail. Every kernel launched
/// this way must execute `griddepcontrol.wait` (`pdl_wait()` in kernels/common.cuh) before it
/// touches memory an earlier kernel writes; the decode kernels do so first thing.
///
/// # Safety
/// `params` must point at live values whose types match the kernel's C signature, and every
/// device pointer among them must be valid for what the kernel does with it.
pub(crate) unsafe fn launch_kernel(
    f: sys::CUfunction,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    stream: sys::CUstream,
    params: &mut [*mut c_void],
    pdl: bool,
) -> Result<(), cudarc::driver::DriverError> {
    if !pdl {
        return result::launch_kernel(f, grid, (block, 1, 1), smem, stream, params);
    }
    // SAFETY (of the zeroed value): the attribute value is a plain C union of integers.
    let mut value: sys::CUlaunchAttributeValue = std::mem::zeroed();
    value.programmaticStreamSerializationAllowed = 1;
    let mut attr = sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        pad: [0; 4],
        value,
    };
    let config = sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: stream,
        attrs: &mut attr,
        numAttrs: 1,
    };
    sys::cuLaunchKernelEx(&config, f, params.as_mut_ptr(), std::ptr::null_mut()).result()
}

/// One loaded module (`kernels/<name>.cu`).
struct Module {
    name: &'static str,
    handle: sys::CUmodule,
}

/// The GPU this backend runs on: context, one stream, the kernel modules.
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Vec<Module>,
    /// `<gpu name> (sm_XY, N MiB)`
    pub description: String,
    /// Streaming multiprocessors (persistent kernels size their grids by it).
    pub sm_count: usize,
    /// Decode kernels go out as programmatic dependent launches ([`launch_kernel`]): off by
    /// default until measured on a GPU (`DS4_CUDA_PDL=1` or [`Device::set_pdl`] turns it on);
    /// profiling turns it off while it runs.
    pdl: std::sync::atomic::AtomicBool,
    supports_pdl: bool,
}

// SAFETY: the module handles are only used through `&self` on the thread that binds the context
// (every entry point binds it first); the driver API is thread-safe for these calls.
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

impl Device {
    /// Opens GPU 0 and loads the embedded kernels. Errors, never panics, when no driver, no GPU or
    /// no kernels (crate built without nvcc) are present.
    pub fn new() -> Result<Arc<Device>, Error> {
        // SAFETY: only tries to dlopen libcuda; no driver function is called.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoDriver);
        }
        let n = CudaContext::device_count().map_err(|e| Error::driver("cuDeviceGetCount", e))?;
        if n < 1 {
            return Err(Error::NoDevice);
        }
        let ctx = CudaContext::new(0).map_err(|e| Error::driver("cuCtxCreate", e))?;
        // SAFETY: we never share CudaSlices across streams; disabling the tracking keeps event
        // records out of captured graphs.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| Error::driver("cuStreamCreate", e))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| Error::driver("cuDeviceGetAttribute", e))?;
        let mem = ctx.total_mem().unwrap_or(0) >> 20;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| Error::driver("cuDeviceGetAttribute", e))?
            .max(1) as usize;
        let mut dev = Device {
            ctx,
            stream,
            modules: Vec::new(),
            description: format!("{name} (sm_{major}{minor}, {mem} MiB)"),
            sm_count,
            pdl: std::sync::atomic::AtomicBool::new(
                major >= 9 && crate::knobs::flag("DS4_CUDA_PDL", crate::knobs::PDL),
            ),
            supports_pdl: major >= 9,
        };
        for (name, image) in crate::kernels::MODULES {
            let image = image.ok_or(Error::NoKernels)?;
            let handle = load_image(name, image)?;
            dev.modules.push(Module { name, handle });
        }
        Ok(Arc::new(dev))
    }

    pub(crate) fn bind(&self) -> Result<(), Error> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| Error::driver("cuCtxSetCurrent", e))
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Whether decode kernels are launched as programmatic dependent launches.
    pub fn pdl(&self) -> bool {
        self.pdl.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns programmatic dependent launches on or off for later launches (a captured graph
    /// keeps what it was captured with). Returns the previous setting.
    pub fn set_pdl(&self, on: bool) -> bool {
        self.pdl.swap(on, std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the device can take programmatic dependent launches (compute capability 9.0+).
    pub fn supports_pdl(&self) -> bool {
        self.supports_pdl
    }

    /// The kernel `name` of module `module`.
    pub(crate) fn function(&self, module: &str, name: &str) -> Result<sys::CUfunction, Error> {
        let m = self
            .modules
            .iter()
            .find(|m| m.name == module)
            .ok_or(Error::NoKernels)?;
        let c = CString::new(name).map_err(|_| Error::MissingKernel(name.to_string()))?;
        // SAFETY: the module handle is alive (owned by self) and the context is current.
        unsafe { result::module::get_function(m.handle, c) }
            .map_err(|_| Error::MissingKernel(name.to_string()))
    }

    /// Allocates `bytes` of zeroed device memory.
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DevBuf, Error> {
        self.bind()?;
        let n = bytes.max(256);
        // SAFETY: plain cuMemAlloc of a nonzero size with the context current.
        let ptr = unsafe { result::malloc_sync(n) }.map_err(|_| Error::OutOfMemory { bytes: n })?;
        // SAFETY: ptr was just allocated with n bytes.
        unsafe { result::memset_d8_sync(ptr, 0, n) }.map_err(|e| Error::driver("cuMemsetD8", e))?;
        Ok(DevBuf {
            dev: self.clone(),
            ptr,
            bytes,
        })
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), Error> {
        self.stream
            .synchronize()
            .map_err(|e| Error::driver("cuStreamSynchronize", e))
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), Error> {
        self.bind()?;
        result::mem_get_info().map_err(|e| Error::driver("cuMemGetInfo", e))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        for m in &self.modules {
            // SAFETY: every buffer and graph holds an Arc<Device>, so no kernel of this module can
            // run after the last reference is gone.
            let _ = unsafe { result::module::unload(m.handle) };
        }
    }
}

/// A device allocation, freed on drop. Kernels get its raw address ([`DevBuf::ptr`]).
pub struct DevBuf {
    dev: Arc<Device>,
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

impl DevBuf {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Copies `src` to byte offset `at` (synchronous with respect to the stream).
    pub fn upload<T: Copy>(&self, at: usize, src: &[T]) -> Result<(), Error> {
        let n = std::mem::size_of_val(src);
        assert!(
            at + n <= self.bytes,
            "invariant: upload of {n} bytes at {at} into a buffer of {}",
            self.bytes
        );
        self.dev.bind()?;
        self.dev.synchronize()?;
        // SAFETY: the range [ptr+at, ptr+at+n) lies in this allocation (asserted above) and `src`
        // is a valid host slice of n bytes.
        unsafe { result::memcpy_htod_sync(self.ptr + at as u64, src) }
            .map_err(|e| Error::driver("cuMemcpyHtoD", e))
    }

    /// Copies `dst.len()` values from byte offset `at` after all queued work has finished.
    pub fn download<T: Copy>(&self, at: usize, dst: &mut [T]) -> Result<(), Error> {
        let n = std::mem::size_of_val(dst);
        assert!(
            at + n <= self.bytes,
            "invariant: download of {n} bytes at {at} from a buffer of {}",
            self.bytes
        );
        self.dev.bind()?;
        self.dev.synchronize()?;
        // SAFETY: the range lies in this allocation (asserted) and `dst` is a valid host slice.
        unsafe { result::memcpy_dtoh_sync(dst, self.ptr + at as u64) }
            .map_err(|e| Error::driver("cuMemcpyDtoH", e))
    }

    /// Sets every byte to `value` on the stream.
    pub fn fill_bytes(&self, value: u8) -> Result<(), Error> {
        self.dev.bind()?;
        // SAFETY: the whole allocation, on our stream.
        unsafe { result::memset_d8_async(self.ptr, value, self.bytes.max(1), self.dev.cu_stream()) }
            .map_err(|e| Error::driver("cuMemsetD8Async", e))
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        let _ = self.dev.bind();
        let _ = self.dev.synchronize();
        // SAFETY: allocated by malloc_sync in Device::alloc, freed exactly once here after the
        // stream drained.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}
