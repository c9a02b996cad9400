//! The filter subset both stores honour, evaluated in memory.

use std::cmp::Ordering;

use super::{Bson, Document, StoreError};

/// Looks up a dotted path (`a.b.c`) in a document.
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut cur = doc.get(first)?;
    for p in parts {
        cur = match cur {
            Bson::Document(d) => d.get(p)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Orders two BSON values the way MongoDB does for the types we use
/// (numbers across int/double, strings, booleans, dates); other pairs by type.
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    fn num(b: &Bson) -> Option<f64> {
        match b {
            Bson::Int32(v) => Some(*v as f64),
            Bson::Int64(v) => Some(*v as f64),
            Bson::Double(v) => Some(*v),
            _ => None,
        }
    }
    if let (Some(x), Some(y)) = (num(a), num(b)) {
        return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
    }
    match (a, b) {
        (Bson::String(x), Bson::String(y)) => x.cmp(y),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Null, Bson::Null) => Ordering::Equal,
        _ => type_rank(a).cmp(&type_rank(b)),
    }
}

fn type_rank(b: &Bson) -> u8 {
    match b {
        Bson::Null => 1,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => 2,
        Bson::String(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        _ => 10,
    }
}

fn equals(a: &Bson, b: &Bson) -> bool {
    compare(a, b) == Ordering::Equal && type_rank(a) == type_rank(b)
}

/// True when `doc` matches `filter`.
pub fn matches(doc: &Document, filter: &Document) -> Result<bool, StoreError> {
    for (key, cond) in filter {
        let ok = match key.as_str() {
            "$and" => each_clause(cond)?
                .iter()
                .try_fold(true, |acc, f| Ok::<_, StoreError>(acc && matches(doc, f)?))?,
            "$or" => each_clause(cond)?
                .iter()
                .try_fold(false, |acc, f| Ok::<_, StoreError>(acc || matches(doc, f)?))?,
            k if k.starts_with('$') => {
                return Err(StoreError::Filter(format!("operator {k} at top level")));
            }
            path => field_matches(get_path(doc, path), cond)?,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn each_clause(cond: &Bson) -> Result<Vec<&Document>, StoreError> {
    match cond {
        Bson::Array(items) => items
            .iter()
            .map(|i| match i {
                Bson::Document(d) => Ok(d),
                _ => Err(StoreError::Filter("$and/$or takes documents".into())),
            })
            .collect(),
        _ => Err(StoreError::Filter("$and/$or takes an array".into())),
    }
}

fn value_matches(value: Option<&Bson>, pred: impl Fn(&Bson) -> bool) -> bool {
    match value {
        // An array field matches when any element does (MongoDB semantics).
        Some(Bson::Array(items)) => items.iter().any(&pred),
        Some(v) => pred(v),
        None => false,
    }
}

fn field_matches(value: Option<&Bson>, cond: &Bson) -> Result<bool, StoreError> {
    let ops = match cond {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => d,
        // `{field: null}` also matches a missing field (MongoDB semantics).
        other => {
            return Ok(value_matches(value, |v| equals(v, other))
                || value == Some(other)
                || (matches!(other, Bson::Null) && value.is_none()));
        }
    };
    for (op, arg) in ops {
        let ok = match op.as_str() {
            "$eq" => value_matches(value, |v| equals(v, arg)),
            "$ne" => !value_matches(value, |v| equals(v, arg)),
            "$gt" => value_matches(value, |v| compare(v, arg) == Ordering::Greater),
            "$gte" => value_matches(value, |v| compare(v, arg) != Ordering::Less),
            "$lt" => value_matches(value, |v| compare(v, arg) == Ordering::Less),
            "$lte" => value_matches(value, |v| compare(v, arg) != Ordering::Greater),
            "$in" | "$nin" => {
                let Bson::Array(set) = arg else {
                    return Err(StoreError::Filter(format!("{op} takes an array")));
                };
                let hit = value_matches(value, |v| set.iter().any(|s| equals(v, s)));
                if op == "$in" { hit } else { !hit }
            }
            "$exists" => {
                let want = matches!(arg, Bson::Boolean(true));
                value.is_some() == want
            }
            other => return Err(StoreError::Filter(format!("operator {other}"))),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Compares two documents by a sort spec (`{field: 1 | -1}`), then by `_id`.
pub fn sort_cmp(a: &Document, b: &Document, sort: &Document) -> Ordering {
    for (path, dir) in sort {
        let desc = matches!(dir, Bson::Int32(-1) | Bson::Int64(-1)) || dir.as_f64() == Some(-1.0);
        let (x, y) = (get_path(a, path), get_path(b, path));
        let ord = match (x, y) {
            (Some(x), Some(y)) => compare(x, y),
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        let ord = if desc { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    compare(
        a.get("_id").unwrap_or(&Bson::Null),
        b.get("_id").unwrap_or(&Bson::Null),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::doc;

    #[test]
    fn subset_semantics() {
        let d = doc! {"_id": "a", "price": 120_i64, "brand": "Oakley",
        "inventory": {"in_stock": true}, "tags": ["bold", "sport"]};
        assert!(matches(&d, &doc! {"brand": "Oakley"}).unwrap());
        assert!(matches(&d, &doc! {"price": {"$gte": 100, "$lt": 121.0}}).unwrap());
        assert!(!matches(&d, &doc! {"price": {"$gt": 120}}).unwrap());
        assert!(matches(&d, &doc! {"inventory.in_stock": true}).unwrap());
        assert!(matches(&d, &doc! {"tags": "sport"}).unwrap());
        assert!(matches(&d, &doc! {"tags": {"$in": ["x", "bold"]}}).unwrap());
        assert!(matches(&d, &doc! {"missing": {"$exists": false}}).unwrap());
        assert!(matches(&d, &doc! {"$or": [{"brand": "X"}, {"price": 120}]}).unwrap());
        assert!(matches(&d, &doc! {"x": {"$regex": "a"}}).is_err());
    }
}
