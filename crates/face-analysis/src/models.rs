//! The four MediaPipe models on ONNX Runtime, and a pool of engines.
//!
//! ONNX Runtime is loaded at run time (`ort`'s `load-dynamic`) from the
//! library `scripts/fetch-models.sh` puts beside the models. Each [`Engine`]
//! owns one session per model with one intra-op thread; running a session
//! needs `&mut`, so the [`Pool`] hands out whole engines, one per core: a
//! request runs its stages back to back on one core without contention.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

/// Model files, in the models directory.
pub const SHORT_RANGE: &str = "face_detection_short_range.onnx";
/// Full-range detector.
pub const FULL_RANGE: &str = "face_detection_full_range.onnx";
/// FaceMesh.
pub const MESH: &str = "face_landmark.onnx";
/// Iris.
pub const IRIS: &str = "iris_landmark.onnx";
/// ONNX Runtime library.
pub const RUNTIME_LIB: &str = "libonnxruntime.so";

/// Loading failures; the service stays up and answers FAILED_PRECONDITION
/// for photos (client landmarks still work).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ModelError {
    /// A file is missing.
    #[error(
        "face models are not installed: {0} is missing; run scripts/fetch-models.sh (or set DISCOVERY_FACE_MODELS_DIR)"
    )]
    Missing(PathBuf),
    /// ONNX Runtime failed.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// A model's output has an unexpected shape.
    #[error("model {model}: unexpected output shape {shape}")]
    Shape {
        /// Which model.
        model: &'static str,
        /// What it returned.
        shape: String,
    },
}

fn rt(e: impl std::fmt::Display) -> ModelError {
    ModelError::Runtime(e.to_string())
}

/// The process's ONNX Runtime environment (one is allowed per process).
static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process (the first directory wins).
fn load_runtime(dir: &Path) -> Result<&'static ort::environment::Environment, ModelError> {
    let lib = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join(RUNTIME_LIB));
    if !lib.exists() {
        return Err(ModelError::Missing(lib));
    }
    match RUNTIME.get_or_init(|| {
        ort::init_from(&lib)
            .map_err(|e| e.to_string())?
            .with_name("discovery-face-analysis")
            .build()
            .map_err(|e| e.to_string())
    }) {
        Ok(env) => Ok(env),
        Err(e) => Err(ModelError::Runtime(e.clone())),
    }
}

/// One session per model.
pub struct Engine {
    short: Session,
    full: Session,
    mesh: Session,
    iris: Session,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine")
    }
}

fn session(
    env: &ort::environment::Environment,
    dir: &Path,
    file: &str,
) -> Result<Session, ModelError> {
    let path = dir.join(file);
    if !path.exists() {
        return Err(ModelError::Missing(path));
    }
    Session::builder(env)
        .map_err(rt)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(rt)?
        .with_intra_threads(1)
        .map_err(rt)?
        .with_inter_threads(1)
        .map_err(rt)?
        .commit_from_file(&path)
        .map_err(rt)
}

/// Raw outputs of one model run.
pub type Outputs = (Vec<f32>, Vec<f32>);

impl Engine {
    /// Loads the four models from `dir`.
    pub fn load(dir: &Path) -> Result<Engine, ModelError> {
        let env = load_runtime(dir)?;
        Ok(Engine {
            short: session(env, dir, SHORT_RANGE)?,
            full: session(env, dir, FULL_RANGE)?,
            mesh: session(env, dir, MESH)?,
            iris: session(env, dir, IRIS)?,
        })
    }

    fn run(
        session: &mut Session,
        model: &'static str,
        n: usize,
        input: &[f32],
        expect: (usize, usize),
    ) -> Result<Outputs, ModelError> {
        let tensor = TensorRef::from_array_view(([1usize, 3, n, n], input)).map_err(rt)?;
        let out = session.run(ort::inputs![tensor]).map_err(rt)?;
        if out.len() < 2 {
            return Err(ModelError::Shape {
                model,
                shape: format!("{} outputs", out.len()),
            });
        }
        let a = out[0].try_extract_tensor::<f32>().map_err(rt)?.1.to_vec();
        let b = out[1].try_extract_tensor::<f32>().map_err(rt)?.1.to_vec();
        if a.len() != expect.0 || b.len() != expect.1 {
            return Err(ModelError::Shape {
                model,
                shape: format!("{} and {} values", a.len(), b.len()),
            });
        }
        Ok((a, b))
    }

    /// Short-range detector on a 128×128 [-1,1] input: (regressors 896×16, scores 896).
    pub fn short_range(&mut self, input: &[f32]) -> Result<Outputs, ModelError> {
        Self::run(
            &mut self.short,
            "short-range detector",
            128,
            input,
            (896 * 16, 896),
        )
    }

    /// Full-range detector on a 192×192 [-1,1] input: (2304×16, 2304).
    pub fn full_range(&mut self, input: &[f32]) -> Result<Outputs, ModelError> {
        Self::run(
            &mut self.full,
            "full-range detector",
            192,
            input,
            (2304 * 16, 2304),
        )
    }

    /// FaceMesh on a 192×192 [0,1] input: (468×3 landmarks, face logit).
    pub fn mesh(&mut self, input: &[f32]) -> Result<Outputs, ModelError> {
        Self::run(&mut self.mesh, "face mesh", 192, input, (1404, 1))
    }

    /// Iris on a 64×64 [0,1] input: (71×3 eye contour, 5×3 iris).
    pub fn iris(&mut self, input: &[f32]) -> Result<Outputs, ModelError> {
        Self::run(&mut self.iris, "iris", 64, input, (213, 15))
    }
}

/// Engines for concurrent requests. [`Pool::get`] waits for a free one.
#[derive(Clone)]
pub struct Pool {
    engines: Arc<Mutex<Vec<Engine>>>,
    free: Arc<tokio::sync::Semaphore>,
    size: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({})", self.size)
    }
}

/// An engine borrowed from the pool, returned on drop.
pub struct Lease {
    engine: Option<Engine>,
    pool: Pool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for Lease {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        self.engine.as_ref().expect("engine present until drop")
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Engine {
        self.engine.as_mut().expect("engine present until drop")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            self.pool
                .engines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e);
        }
    }
}

impl Pool {
    /// Loads `size` engines from `dir`.
    pub fn load(dir: &Path, size: usize) -> Result<Pool, ModelError> {
        let size = size.max(1);
        let engines = (0..size)
            .map(|_| Engine::load(dir))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool {
            engines: Arc::new(Mutex::new(engines)),
            free: Arc::new(tokio::sync::Semaphore::new(size)),
            size,
        })
    }

    /// Number of engines.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Waits for a free engine.
    pub async fn get(&self) -> Lease {
        let permit = self
            .free
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        let engine = self.engines.lock().unwrap_or_else(|p| p.into_inner()).pop();
        Lease {
            engine: Some(engine.expect("a permit guarantees a free engine")),
            pool: self.clone(),
            _permit: permit,
        }
    }

    /// Engines not in use now.
    pub fn idle(&self) -> usize {
        self.free.available_permits()
    }
}
