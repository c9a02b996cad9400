//! MongoDB's rule for compound indexes over arrays ("cannot index parallel
//! arrays", server error code 171), checked without a MongoDB server.
//!
//! MongoDB refuses to index a document in which two fields of one compound
//! index hold arrays along different paths: the insert or update fails and
//! an index build over such documents fails. Fields under one shared array
//! (`{"a.x": 1, "a.y": 1}` over `a: [{x, y}]`) are fine. The test server
//! (SecantusDB) does not enforce the rule, so the embedded store does
//! ([`crate::store::memory::MemoryStore`] refuses such writes and index
//! builds) and every service's index set is checked against its stored
//! documents by a test (`tests/harness/tests/mongodb_rules.rs`).
//!
//! Reference: MongoDB manual, "Multikey Indexes" → "Compound Multikey
//! Indexes": "each indexed document can have at most one indexed field whose
//! value is an array".

use std::collections::BTreeSet;

use super::{Bson, Document, IndexSpec};

/// Two fields of one compound index that are both arrays in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParallelArrays {
    /// Index name.
    pub index: String,
    /// The array along the first key path.
    pub first: String,
    /// The array along the second key path.
    pub second: String,
}

impl std::fmt::Display for ParallelArrays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot index parallel arrays [{}] [{}] in index {} (MongoDB refuses such documents, code 171)",
            self.first, self.second, self.index
        )
    }
}

/// Where `path` meets an array in `doc`: each prefix of the path (dotted)
/// whose value is an array, along every branch the arrays open.
pub fn array_prefixes(doc: &Document, path: &str) -> BTreeSet<String> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = BTreeSet::new();
    walk(doc, &parts, 0, &mut out);
    out
}

fn walk(doc: &Document, parts: &[&str], depth: usize, out: &mut BTreeSet<String>) {
    let Some(value) = doc.get(parts[depth]) else {
        return;
    };
    visit(value, parts, depth, out);
}

fn visit(value: &Bson, parts: &[&str], depth: usize, out: &mut BTreeSet<String>) {
    match value {
        Bson::Array(items) => {
            out.insert(parts[..=depth].join("."));
            if depth + 1 < parts.len() {
                for item in items {
                    if let Bson::Document(d) = item {
                        walk(d, parts, depth + 1, out);
                    }
                }
            }
        }
        Bson::Document(d) if depth + 1 < parts.len() => walk(d, parts, depth + 1, out),
        _ => {}
    }
}

/// The first pair of key paths of `index` that are arrays along different
/// paths in `doc`, if any. A partial index skips documents its filter does
/// not select, as MongoDB does.
pub fn parallel_arrays(index: &IndexSpec, doc: &Document) -> Option<ParallelArrays> {
    if index.keys.len() < 2 {
        return None;
    }
    if let Some(filter) = &index.partial_filter
        && !super::filter::matches(doc, filter).unwrap_or(true)
    {
        return None;
    }
    let arrays: Vec<BTreeSet<String>> = index
        .keys
        .keys()
        .map(|path| array_prefixes(doc, path))
        .collect();
    for (i, a) in arrays.iter().enumerate() {
        for b in &arrays[i + 1..] {
            // Arrays both paths go through (a shared `a` of `a.x` and `a.y`)
            // are one array, not two.
            let own_a = a.difference(b).next();
            let own_b = b.difference(a).next();
            if let (Some(x), Some(y)) = (own_a, own_b) {
                return Some(ParallelArrays {
                    index: index.name.clone(),
                    first: x.clone(),
                    second: y.clone(),
                });
            }
        }
    }
    None
}

/// [`parallel_arrays`] over a set of indexes.
pub fn check(indexes: &[IndexSpec], doc: &Document) -> Result<(), ParallelArrays> {
    match indexes.iter().find_map(|ix| parallel_arrays(ix, doc)) {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::doc;

    fn ix(keys: Document) -> IndexSpec {
        IndexSpec::new("ix", keys)
    }

    #[test]
    fn two_arrays_in_one_compound_index_are_refused() {
        let index = ix(doc! {"brand": 1, "categories": 1, "kw": 1});
        let d = doc! {"brand": "b", "categories": ["x", "y"], "kw": ["bold"]};
        let p = parallel_arrays(&index, &d).expect("parallel arrays");
        assert_eq!((p.first.as_str(), p.second.as_str()), ("categories", "kw"));
        assert!(p.to_string().contains("code 171"), "{p}");
        // One of them an array: fine (a multikey index).
        let one = doc! {"brand": "b", "categories": ["x"], "kw": "bold"};
        assert_eq!(parallel_arrays(&index, &one), None);
        // An empty array is still an array to MongoDB.
        let empty = doc! {"brand": "b", "categories": [], "kw": []};
        assert!(parallel_arrays(&index, &empty).is_some());
    }

    #[test]
    fn arrays_under_a_dotted_path_count() {
        let index = ix(doc! {"inventory.variants.sku": 1, "tags": 1});
        let d = doc! {"inventory": {"variants": [{"sku": "a"}, {"sku": "b"}]}, "tags": ["t"]};
        let p = parallel_arrays(&index, &d).expect("parallel arrays");
        assert_eq!(p.first, "inventory.variants");
        // The leaf itself an array inside an array of documents.
        let nested = doc! {"a": {"b": [{"c": [1, 2]}]}};
        assert_eq!(
            array_prefixes(&nested, "a.b.c")
                .into_iter()
                .collect::<Vec<_>>(),
            ["a.b", "a.b.c"]
        );
    }

    #[test]
    fn fields_under_one_shared_array_are_one_array() {
        let index = ix(doc! {"variants.sku": 1, "variants.stock": 1});
        let d = doc! {"variants": [{"sku": "a", "stock": 1}, {"sku": "b", "stock": 0}]};
        assert_eq!(parallel_arrays(&index, &d), None);
    }

    #[test]
    fn a_partial_index_skips_documents_it_does_not_select() {
        let index = ix(doc! {"a": 1, "b": 1}).partial(doc! {"live": true});
        let d = doc! {"a": [1], "b": [2], "live": false};
        assert_eq!(parallel_arrays(&index, &d), None);
        let live = doc! {"a": [1], "b": [2], "live": true};
        assert!(parallel_arrays(&index, &live).is_some());
    }
}
