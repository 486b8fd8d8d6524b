//! [`Engine`]: a loaded model plus the recipe for making backends over it. One engine serves any
//! number of [`Session`]s (each owns its own KV state); the server keeps exactly one.

use std::path::PathBuf;
use std::sync::Arc;

use ds4_cpu::CpuBackend;
use ds4_model::{Backend, Config, Model};

use crate::testing::FakeBackend;
use crate::{Result, Session};

/// Makes a fresh backend (its own KV state) for a context of the given size.
pub type BackendFactory = Arc<dyn Fn(usize) -> Result<Box<dyn Backend>> + Send + Sync>;

/// Where the weights come from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A GGUF file (`-m FILE`).
    File(PathBuf),
    /// The tiny built-in demo model (`--demo`), generated once under `cache_dir` with the given
    /// vocabulary (`ds4_chat::builtin_vocab()`), so it tokenizes like the real model.
    Demo {
        cache_dir: PathBuf,
        tokens: Vec<String>,
        merges: Vec<String>,
    },
}

/// Which backend sessions run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// The reference CPU backend (`ds4-cpu`).
    #[default]
    Cpu,
    /// The CUDA backend (`ds4-cuda`): errors clearly when no GPU or no kernels are present.
    Cuda,
}

impl BackendKind {
    /// `cpu` or `cuda` (case-insensitive); `None` for anything else.
    pub fn from_name(name: &str) -> Option<BackendKind> {
        match name.to_ascii_lowercase().as_str() {
            "cpu" => Some(BackendKind::Cpu),
            "cuda" => Some(BackendKind::Cuda),
            _ => None,
        }
    }
}

/// What [`Engine::open`] loads.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub model: ModelSource,
    pub backend: BackendKind,
}

/// A model ready to run: its [`Config`] and a backend factory.
#[derive(Clone)]
pub struct Engine {
    config: Config,
    backend_name: &'static str,
    factory: BackendFactory,
    model: Option<Arc<Model>>,
}

impl Engine {
    /// Loads and validates the model (spec/model.md §1.4, §2) and prepares the backend.
    pub fn open(opts: &EngineOptions) -> Result<Engine> {
        let path = match &opts.model {
            ModelSource::File(p) => p.clone(),
            ModelSource::Demo {
                cache_dir,
                tokens,
                merges,
            } => ds4_model::synth::ensure_demo_model(cache_dir, tokens.clone(), merges.clone())
                .map_err(|e| crate::Error::Model(format!("demo model: {e}")))?,
        };
        let model = Model::open(&path)
            .map_err(|e| crate::Error::Model(format!("{}: {e}", path.display())))?;
        Ok(Engine::from_model(Arc::new(model), opts.backend))
    }

    /// An engine over an already loaded model.
    pub fn from_model(model: Arc<Model>, backend: BackendKind) -> Engine {
        let config = model.config.clone();
        let m = model.clone();
        let factory: BackendFactory = match backend {
            BackendKind::Cpu => Arc::new(move |ctx| {
                Ok(Box::new(CpuBackend::new(m.clone(), ctx)?) as Box<dyn Backend>)
            }),
            BackendKind::Cuda => Arc::new(move |ctx| {
                let be = ds4_cuda::CudaBackend::new(m.clone(), ctx)
                    .map_err(ds4_model::BackendError::from)?;
                Ok(Box::new(be) as Box<dyn Backend>)
            }),
        };
        Engine {
            config,
            backend_name: match backend {
                BackendKind::Cpu => "cpu",
                BackendKind::Cuda => "cuda",
            },
            factory,
            model: Some(model),
        }
    }

    /// An engine over any backend factory (tests, other backends).
    pub fn from_factory(
        config: Config,
        backend_name: &'static str,
        factory: BackendFactory,
    ) -> Engine {
        Engine {
            config,
            backend_name,
            factory,
            model: None,
        }
    }

    /// A test engine over [`FakeBackend`] (deterministic logits, no model file).
    pub fn fake(n_vocab: usize) -> Engine {
        let config = crate::testing::tiny_config(n_vocab);
        let factory: BackendFactory =
            Arc::new(move |ctx| Ok(Box::new(FakeBackend::new(n_vocab, ctx)) as Box<dyn Backend>));
        Engine::from_factory(config, "fake", factory)
    }

    /// The loaded model (its GGUF file carries the tokenizer); `None` for factory engines.
    pub fn model(&self) -> Option<&Arc<Model>> {
        self.model.as_ref()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Name of the backend sessions run on (`cpu`, `fake`).
    pub fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    /// A new empty session with a KV state for `ctx` positions.
    pub fn new_session(&self, ctx: usize) -> Result<Session> {
        Ok(Session::new((self.factory)(ctx)?))
    }
}
