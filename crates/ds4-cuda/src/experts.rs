//! Routed-expert decode kernels on the int8 tensor cores (`kernels/experts.cu`, spec §3.6 F5).
//!
//! [`ExpertKernels::swiglu`] and [`ExpertKernels::down`] compute exactly what
//! `Kernels::gemv(ty, GemvMode::Swiglu, a, n_sel)` and `Kernels::gemv(ty, GemvMode::Down, a, 1)`
//! compute, from the same [`GemvArgs`], on the device's stream with no host synchronisation and
//! no allocation (so they capture into the decode graph). The tensor-core path reads the raw GGUF
//! blocks of IQ2_XXS, Q2_K and Q4_K rows whose length is a whole number of pieces (2048 elements
//! for IQ2_XXS, 1024 for Q2_K and Q4_K: the full model's 4096 and 2048 qualify); any other shape
//! or type goes to the generic `Kernels::gemv`, so every caller gets an answer.
//!
//! Numerics: the f32 input is converted in each CTA to four int8 digits per element under a
//! power-of-two scale per 256-element block (2^-28 of the block's largest |x|), the integer dots
//! are exact, and only the per-block float scaling rounds (fixed order): bit-identical reruns,
//! f32-grade error against a float64 reference (see tests/experts.rs).

use std::ffi::{c_void, CString};
use std::sync::Arc;

use cudarc::driver::{result, sys};
use ds4_gguf::TensorType;

use crate::device::Device;
use crate::launch::{GemvArgs, GemvMode, Kernels};
use crate::Error;

/// `ExpArgs` of kernels/experts.cu (field order and types must match).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ExpArgs {
    w: u64,
    w2: u64,
    x: u64,
    y: u64,
    add: u64,
    sel: u64,
    route_w: u64,
    gate: u64,
    row_bytes: u64,
    expert_bytes: u64,
    n_in: i32,
    n_rows: i32,
    n_sel: i32,
    n_tasks: i32,
    tasks_per_cta: i32,
    n_x: i32,
    clamp: f32,
    alpha: f32,
    off_digits: u32,
    off_scales: u32,
    off_partials: u32,
    off_stage: u32,
}

/// Warps per CTA (`XWARPS`), two-warp teams that share a staged piece (`XTEAMS`) and stage
/// buffers per team (`NBUF`) in kernels/experts.cu.
const WARPS: usize = 16;
const TEAMS: usize = WARPS / 2;
const NBUF: usize = 2;
/// The IQ2_XXS grid and sign tables, one copy per lane of a half warp (`IQ2_TABLE_BYTES`).
const IQ2_TABLE_BYTES: usize = 256 * 128 + 128 * 128;

/// Per-type piece geometry (`XT<TY>` in kernels/experts.cu): blocks per piece, shared-memory
/// row pitch of a staged piece, and the lookup tables' size.
struct Geometry {
    nblk: usize,
    stride: usize,
    tables: usize,
}

fn geometry(ty: TensorType) -> Option<Geometry> {
    match ty {
        TensorType::Iq2Xxs => Some(Geometry {
            nblk: 8,
            stride: 528,
            tables: IQ2_TABLE_BYTES,
        }),
        TensorType::Q2K => Some(Geometry {
            nblk: 4,
            stride: 336,
            tables: 0,
        }),
        TensorType::Q4K => Some(Geometry {
            nblk: 4,
            stride: 592,
            tables: 0,
        }),
        _ => None,
    }
}

fn suffix(ty: TensorType) -> &'static str {
    match ty {
        TensorType::Iq2Xxs => "iq2_xxs",
        TensorType::Q2K => "q2_k",
        _ => "q4_k",
    }
}

/// A planned launch: arguments, CTAs, dynamic shared memory.
struct Plan {
    args: ExpArgs,
    ctas: u32,
    smem: u32,
}

/// The routed-expert kernels, loaded once per device.
pub struct ExpertKernels {
    dev: Arc<Device>,
    module: sys::CUmodule,
    /// `(type, mode, function)`
    funcs: Vec<(TensorType, GemvMode, sys::CUfunction)>,
    /// Shapes the tensor-core path does not take.
    fallback: Kernels,
    n_sm: usize,
    smem_max: usize,
}

// SAFETY: the module and function handles are plain driver handles, valid while `dev` (held here)
// is alive; every launch binds the context first.
unsafe impl Send for ExpertKernels {}
unsafe impl Sync for ExpertKernels {}

impl ExpertKernels {
    /// Loads kernels/experts.cu into the device's context.
    pub fn new(dev: &Arc<Device>) -> Result<ExpertKernels, Error> {
        Self::with_image(dev, crate::kernels::EXPERTS.ok_or(Error::NoKernels)?)
    }

    /// Loads another build of kernels/experts.cu (a fatbin with the same kernels and argument
    /// layout), for benchmarking variants without rebuilding the crate.
    pub fn with_image(dev: &Arc<Device>, image: &[u8]) -> Result<ExpertKernels, Error> {
        let fallback = Kernels::new(dev)?;
        dev.bind()?;
        let module = crate::device::load_image("experts", image)?;
        let mut k = ExpertKernels {
            dev: dev.clone(),
            module,
            funcs: Vec::new(),
            fallback,
            n_sm: 0,
            smem_max: 0,
        };
        let attr = |a| {
            // SAFETY: device ordinal 0 is the one Device::new opened; a plain attribute query.
            unsafe { result::device::get_attribute(result::device::get(0)?, a) }
        };
        k.n_sm = dev.sm_count;
        k.smem_max =
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
                .map_err(|e| Error::driver("cuDeviceGetAttribute", e))? as usize;
        for ty in [TensorType::Iq2Xxs, TensorType::Q2K, TensorType::Q4K] {
            for (mode, prefix) in [
                (GemvMode::Swiglu, "experts_swiglu_"),
                (GemvMode::Down, "experts_down_"),
            ] {
                let name = format!("{prefix}{}", suffix(ty));
                let c =
                    CString::new(name.clone()).map_err(|_| Error::MissingKernel(name.clone()))?;
                // SAFETY: the module is loaded and owned by `k`; the context is current.
                let f = unsafe { result::module::get_function(k.module, c) }
                    .map_err(|_| Error::MissingKernel(name.clone()))?;
                // SAFETY: raises the dynamic shared-memory limit of a valid function handle to the
                // device's opt-in maximum (plans never ask for more).
                unsafe {
                    result::function::set_function_attribute(
                        f,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        k.smem_max as i32,
                    )
                }
                .map_err(|e| Error::driver("cuFuncSetAttribute", e))?;
                k.funcs.push((ty, mode, f));
            }
        }
        Ok(k)
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// `y[k] = silu(min(gate_{sel_k}·x, c))·clamp(up_{sel_k}·x, ±c)·route_w[k]` for the `n_sel`
    /// expert slots (spec §3.6 F5): `Kernels::gemv(ty, GemvMode::Swiglu, *a, n_sel)`.
    pub fn swiglu(&self, ty: TensorType, a: &GemvArgs, n_sel: usize) -> Result<(), Error> {
        if n_sel == 0 {
            return Ok(());
        }
        match self.plan(ty, GemvMode::Swiglu, a, n_sel) {
            Some(p) => self.launch(ty, GemvMode::Swiglu, p),
            None => self.fallback.gemv(ty, GemvMode::Swiglu, *a, n_sel as u32),
        }
    }

    /// `y = alpha·Σ_k down_{sel_k}·x_k + add`, the `a.n_sel` experts summed in selection order
    /// (spec §3.6 F5): `Kernels::gemv(ty, GemvMode::Down, *a, 1)`.
    pub fn down(&self, ty: TensorType, a: &GemvArgs) -> Result<(), Error> {
        match self.plan(ty, GemvMode::Down, a, a.n_sel.max(0) as usize) {
            Some(p) => self.launch(ty, GemvMode::Down, p),
            None => self.fallback.gemv(ty, GemvMode::Down, *a, 1),
        }
    }

    /// GPU milliseconds that `launches` takes on the device stream (CUDA events around it), for
    /// benchmarks: the launches run after all queued work, and the call waits for them.
    pub fn time_ms(&self, launches: &mut dyn FnMut() -> Result<(), Error>) -> Result<f32, Error> {
        self.dev.bind()?;
        let ev = || {
            result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
                .map_err(|e| Error::driver("cuEventCreate", e))
        };
        let (a, b) = (ev()?, ev()?);
        let stream = self.dev.cu_stream();
        let run = (|| {
            // SAFETY: fresh events recorded on our stream.
            unsafe { result::event::record(a, stream) }
                .map_err(|e| Error::driver("cuEventRecord", e))?;
            launches()?;
            // SAFETY: as above.
            unsafe { result::event::record(b, stream) }
                .map_err(|e| Error::driver("cuEventRecord", e))?;
            self.dev.synchronize()?;
            // SAFETY: both events were recorded on our stream, which has drained.
            unsafe { result::event::elapsed(a, b) }
                .map_err(|e| Error::driver("cuEventElapsedTime", e))
        })();
        // SAFETY: the events are no longer used (the stream drained, or the run failed).
        unsafe {
            let _ = result::event::destroy(a);
            let _ = result::event::destroy(b);
        }
        run
    }

    /// Whether the tensor-core path serves this launch (otherwise the generic GEMV does).
    pub fn serves(&self, ty: TensorType, mode: GemvMode, a: &GemvArgs, n_sel: usize) -> bool {
        self.plan(ty, mode, a, n_sel).is_some()
    }

    fn plan(&self, ty: TensorType, mode: GemvMode, a: &GemvArgs, n_sel: usize) -> Option<Plan> {
        let geo = geometry(ty)?;
        let n_in = usize::try_from(a.n_in).ok()?;
        let n_rows = usize::try_from(a.n_rows).ok()?;
        let piece_elems = 256 * geo.nblk;
        let aligned = |p: u64| p != 0 && p.is_multiple_of(16);
        let shape_ok = n_in > 0
            && n_in.is_multiple_of(piece_elems)
            && n_rows > 0
            && n_sel > 0
            && ty.row_bytes(n_in as u64) == Some(a.row_bytes)
            && a.row_bytes.is_multiple_of(16)
            && a.expert_bytes.is_multiple_of(16)
            && aligned(a.w)
            && aligned(a.x)
            && a.y != 0;
        let mode_ok = match mode {
            GemvMode::Swiglu => aligned(a.w2),
            GemvMode::Down => a.sel != 0,
            GemvMode::Plain => false,
        };
        if !shape_ok || !mode_ok {
            return None;
        }
        let kparts = n_in / piece_elems;
        let (n_tasks, ppt, n_x) = match mode {
            GemvMode::Swiglu => (n_sel * n_rows.div_ceil(8), kparts, 1),
            _ => (n_rows.div_ceil(16), kparts * n_sel, n_sel),
        };
        let ctas = n_tasks.min(self.n_sm.max(1));
        let tasks_per_cta = n_tasks.div_ceil(ctas);
        let ctas = n_tasks.div_ceil(tasks_per_cta);
        let off_digits = geo.tables;
        let off_scales = off_digits + n_x * n_in * 4;
        let off_partials = off_scales + (n_x * n_in / 256 * 4).next_multiple_of(16);
        // Two halves of 16 row sums per piece.
        let off_stage = off_partials + (tasks_per_cta * ppt * 2 * 16 * 4).next_multiple_of(16);
        let smem = off_stage + TEAMS * NBUF * 16 * geo.stride;
        if smem > self.smem_max || n_tasks > i32::MAX as usize {
            return None;
        }
        let args = ExpArgs {
            w: a.w,
            w2: a.w2,
            x: a.x,
            y: a.y,
            add: if mode == GemvMode::Down { a.add } else { 0 },
            sel: a.sel,
            route_w: if mode == GemvMode::Swiglu {
                a.route_w
            } else {
                0
            },
            gate: a.gate,
            row_bytes: a.row_bytes,
            expert_bytes: a.expert_bytes,
            n_in: n_in as i32,
            n_rows: n_rows as i32,
            n_sel: n_sel as i32,
            n_tasks: n_tasks as i32,
            tasks_per_cta: tasks_per_cta as i32,
            n_x: n_x as i32,
            clamp: a.clamp,
            alpha: a.alpha,
            off_digits: off_digits as u32,
            off_scales: off_scales as u32,
            off_partials: off_partials as u32,
            off_stage: off_stage as u32,
        };
        Some(Plan {
            args,
            ctas: ctas as u32,
            smem: smem as u32,
        })
    }

    fn launch(&self, ty: TensorType, mode: GemvMode, p: Plan) -> Result<(), Error> {
        let f = self
            .funcs
            .iter()
            .find(|f| f.0 == ty && f.1 == mode)
            .map(|f| f.2)
            .ok_or_else(|| Error::MissingKernel(format!("experts {ty} {mode:?}")))?;
        self.dev.bind()?;
        let mut args = p.args;
        let mut params = [&mut args as *mut ExpArgs as *mut c_void];
        // SAFETY: `params` points at an ExpArgs laid out as the kernel's C struct; its device
        // pointers come from the caller's GemvArgs (live buffers, checked non-null and aligned in
        // `plan`); the shared-memory size was checked against the limit set in `new`.
        // The kernels call pdl_wait() before they read anything an earlier kernel wrote.
        unsafe {
            crate::device::launch_kernel(
                f,
                (p.ctas, 1, 1),
                (WARPS * 32) as u32,
                p.smem,
                self.dev.cu_stream(),
                &mut params,
                self.dev.pdl(),
            )
        }
        .map_err(|e| Error::driver("experts", e))
    }
}

impl Drop for ExpertKernels {
    fn drop(&mut self) {
        let _ = self.dev.bind();
        let _ = self.dev.synchronize();
        // SAFETY: loaded in `new`, unloaded once; the stream has drained, so no kernel of this
        // module is running.
        let _ = unsafe { result::module::unload(self.module) };
    }
}
