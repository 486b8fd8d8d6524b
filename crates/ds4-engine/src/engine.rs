//! [`Engine`]: a loaded model plus the recipe for making backends over it. One engine serves any
//! number of [`Session`]s (each owns its own KV state); the server keeps exactly one.

use std::sync::Arc;

use ds4_model::{Backend, Config};

use crate::testing::FakeBackend;
use crate::{Result, Session};

/// Makes a fresh backend (its own KV state) for a context of the given size.
pub type BackendFactory = Arc<dyn Fn(usize) -> Result<Box<dyn Backend>> + Send + Sync>;

/// A model ready to run: its [`Config`] and a backend factory.
#[derive(Clone)]
pub struct Engine {
    config: Config,
    backend_name: &'static str,
    factory: BackendFactory,
}

impl Engine {
    /// An engine over any backend factory (used by `open` and by tests).
    pub fn from_factory(
        config: Config,
        backend_name: &'static str,
        factory: BackendFactory,
    ) -> Engine {
        Engine {
            config,
            backend_name,
            factory,
        }
    }

    /// A test engine over [`FakeBackend`] (deterministic logits, no model file).
    pub fn fake(n_vocab: usize) -> Engine {
        let config = crate::testing::tiny_config(n_vocab);
        let factory: BackendFactory =
            Arc::new(move |ctx| Ok(Box::new(FakeBackend::new(n_vocab, ctx)) as Box<dyn Backend>));
        Engine::from_factory(config, "fake", factory)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Name of the backend sessions run on (`cpu`, `cuda`, `fake`).
    pub fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    /// A new empty session with a KV state for `ctx` positions.
    pub fn new_session(&self, ctx: usize) -> Result<Session> {
        Ok(Session::new((self.factory)(ctx)?))
    }
}
