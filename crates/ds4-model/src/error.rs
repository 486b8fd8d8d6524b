//! Load errors. A layout check never stops at the first mismatch: every [`Problem`] found in the
//! metadata and the tensor directory is collected into one [`LoadError::Invalid`], so fixing a
//! converter takes one run, not one run per tensor (STYLE §2.6).

use ds4_gguf::TensorType;

/// One thing wrong with a model file. Each variant names the key or tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    MissingKey {
        key: String,
    },
    /// The key exists with a GGUF type the loader does not accept for it (spec §1.4 type rules).
    KeyType {
        key: String,
        expected: &'static str,
        found: String,
    },
    /// The key's value differs from the one the real model requires (strict mode), or is out of
    /// range for any model (tiny mode).
    KeyValue {
        key: String,
        expected: String,
        found: String,
    },
    /// A shape rule between several values does not hold (spec §1.5), e.g. `n_rot` odd.
    Rule(String),
    MissingTensor {
        name: String,
    },
    TensorType {
        name: String,
        expected: String,
        found: TensorType,
    },
    TensorDims {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    /// The tensor's contents are out of range (e.g. an expert id ≥ n_expert in `ffn_gate_tid2eid`).
    TensorData {
        name: String,
        reason: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::MissingKey { key } => write!(f, "missing metadata key {key:?}"),
            Problem::KeyType {
                key,
                expected,
                found,
            } => {
                write!(
                    f,
                    "metadata key {key:?}: expected type {expected}, found {found}"
                )
            }
            Problem::KeyValue {
                key,
                expected,
                found,
            } => {
                write!(
                    f,
                    "metadata key {key:?}: expected {expected}, found {found}"
                )
            }
            Problem::Rule(s) => f.write_str(s),
            Problem::MissingTensor { name } => write!(f, "missing tensor {name:?}"),
            Problem::TensorType {
                name,
                expected,
                found,
            } => {
                write!(f, "tensor {name:?}: type {found}, expected {expected}")
            }
            Problem::TensorDims {
                name,
                expected,
                found,
            } => {
                write!(f, "tensor {name:?}: dims {found:?}, expected {expected:?}")
            }
            Problem::TensorData { name, reason } => write!(f, "tensor {name:?}: {reason}"),
        }
    }
}

/// Which rule set a file was checked against (see [`crate::Config::from_gguf`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    /// The file claims the real widths (n_embd 4096, n_vocab 129280): every §1.1/§1.2 constant,
    /// the compress-ratio schedule and every tensor type and shape must match the real model.
    Strict,
    /// Any other shape: the §1.5 rules, and tensor shapes consistent with the file's own config.
    Tiny,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Gguf(#[from] ds4_gguf::Error),
    #[error("{}", render_problems(*.mode, .problems))]
    Invalid {
        mode: CheckMode,
        problems: Vec<Problem>,
    },
}

impl LoadError {
    /// The problems of an [`LoadError::Invalid`] (empty for container errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            LoadError::Invalid { problems, .. } => problems,
            LoadError::Gguf(_) => &[],
        }
    }
}

fn render_problems(mode: CheckMode, problems: &[Problem]) -> String {
    let how = match mode {
        CheckMode::Strict => "checked against the real DeepSeek V4 Flash layout",
        CheckMode::Tiny => "checked as a small model of the same architecture",
    };
    let mut s = format!(
        "not a valid DS4 model file ({} problem{}, {how}):",
        problems.len(),
        plural(problems.len())
    );
    for p in problems {
        s.push_str("\n  - ");
        s.push_str(&p.to_string());
    }
    s
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
