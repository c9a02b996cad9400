//! The in-memory serving snapshot of the catalogue.
//!
//! Invariant: the request path reads only the snapshot, never the database.
//! A snapshot is immutable; updates build a new one and swap the `Arc`, so
//! readers never block writers and always see one consistent version.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::catalog::Frame;

/// One immutable version of the catalogue.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Frames, in id order.
    pub frames: Vec<Frame>,
    /// Index by id into `frames`.
    pub by_id: HashMap<String, usize>,
    /// Version, bumped on each change applied.
    pub version: i64,
}

impl Catalog {
    /// Builds a catalogue from frames.
    pub fn new(mut frames: Vec<Frame>, version: i64) -> Self {
        frames.sort_by(|a, b| a.id.cmp(&b.id));
        let by_id = frames
            .iter()
            .enumerate()
            .map(|(i, f)| (f.id.clone(), i))
            .collect();
        Self {
            frames,
            by_id,
            version,
        }
    }

    /// A frame by id.
    pub fn get(&self, id: &str) -> Option<&Frame> {
        self.by_id.get(id).map(|&i| &self.frames[i])
    }
}

/// The swappable current catalogue.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    current: Arc<RwLock<Arc<Catalog>>>,
}

impl Snapshot {
    /// The current version (cheap: one `Arc` clone).
    pub fn load(&self) -> Arc<Catalog> {
        self.current.read().clone()
    }

    /// Replaces the catalogue.
    pub fn replace(&self, catalog: Catalog) {
        *self.current.write() = Arc::new(catalog);
    }
}
