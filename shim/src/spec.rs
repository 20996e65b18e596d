//! The bundle's config.json, kept as raw JSON.
//!
//! oci-spec's types drop fields they do not model, so a wrapper that loaded and saved
//! through them would lose what the engine wrote. Edits work on the JSON tree itself
//! (key order preserved) and touch only what they mean to change.

use serde_json::{Map, Value};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} is not a JSON object")]
    NotObject { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("config.json field {field} is {found}, expected {expected}")]
    Shape {
        field: String,
        found: String,
        expected: &'static str,
    },
}

/// A runtime spec: the JSON tree and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub path: PathBuf,
    pub json: Value,
}

impl Spec {
    pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
        let path = bundle.join("config.json");
        let bytes = fs::read(&path).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        let json: Value = serde_json::from_slice(&bytes).map_err(|source| SpecError::Parse {
            path: path.clone(),
            source,
        })?;
        if !json.is_object() {
            return Err(SpecError::NotObject { path });
        }
        Ok(Spec { path, json })
    }

    /// Writes the spec back in place ([`crate::fsutil::overwrite`]): the file keeps
    /// its inode, owner, mode and labels.
    pub fn save(&self) -> Result<(), SpecError> {
        let bytes = serde_json::to_vec(&self.json).expect("a JSON tree always serializes");
        crate::fsutil::overwrite(&self.path, &bytes).map_err(|source| SpecError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// `process.env` as (name, value) pairs; a later duplicate wins, as in execve
    /// lookups by libc.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.json
            .pointer("/process/env")?
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str()?.split_once('='))
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
            .next_back()
    }

    /// Sets `name=value` in `process.env`: the first entry of that name is replaced
    /// and later duplicates dropped, else it is appended. Returns whether anything
    /// changed.
    pub fn set_env(&mut self, name: &str, value: &str) -> Result<bool, SpecError> {
        let entry = format!("{name}={value}");
        let env = self.array_mut(&["process"], "env")?;
        let same = |v: &Value| {
            v.as_str()
                .and_then(|s| s.split_once('='))
                .is_some_and(|(k, _)| k == name)
        };
        let before = env.clone();
        match env.iter().position(same) {
            Some(first) => {
                env[first] = Value::String(entry);
                let mut i = 0;
                env.retain(|v| {
                    i += 1;
                    i - 1 == first || !same(v)
                });
            }
            None => env.push(Value::String(entry)),
        }
        Ok(*env != before)
    }

    /// The array `key` in the object at `path`, created empty where missing or null.
    pub fn array_mut(&mut self, path: &[&str], key: &str) -> Result<&mut Vec<Value>, SpecError> {
        let obj = self.object_mut(path)?;
        let slot = obj
            .entry(key.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if slot.is_null() {
            *slot = Value::Array(Vec::new());
        }
        if !slot.is_array() {
            let mut field = path.join("/");
            field.push('/');
            field.push_str(key);
            return Err(shape(&field, slot, "an array"));
        }
        Ok(slot.as_array_mut().expect("checked above"))
    }

    /// Puts `item` into the array `key` of the object at `path`: it replaces the entry
    /// whose `id` field (a device's `path`, a mount's `destination`) equals its own,
    /// else it is appended. Returns whether anything changed.
    pub fn upsert(
        &mut self,
        path: &[&str],
        key: &str,
        id: &str,
        item: Value,
    ) -> Result<bool, SpecError> {
        let arr = self.array_mut(path, key)?;
        let same = |v: &Value| item.get(id).is_some() && v.get(id) == item.get(id);
        match arr.iter().position(same) {
            Some(i) if arr[i] == item => Ok(false),
            Some(i) => {
                arr[i] = item;
                Ok(true)
            }
            None => {
                arr.push(item);
                Ok(true)
            }
        }
    }

    /// Appends `item` to the array `key` of the object at `path` unless an equal entry
    /// is there. Returns whether it was appended.
    pub fn push_unique(
        &mut self,
        path: &[&str],
        key: &str,
        item: Value,
    ) -> Result<bool, SpecError> {
        let arr = self.array_mut(path, key)?;
        if arr.contains(&item) {
            return Ok(false);
        }
        arr.push(item);
        Ok(true)
    }

    /// `process.user.uid` and `gid` (0 when absent, as runc reads them).
    pub fn user(&self) -> (u32, u32) {
        let get = |f: &str| {
            self.json
                .pointer(&format!("/process/user/{f}"))
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0)
        };
        (get("uid"), get("gid"))
    }

    /// An integer at a JSON pointer: `None` when absent or null, an error when of
    /// another type.
    pub fn int(&self, pointer: &str) -> Result<Option<i64>, SpecError> {
        match self.json.pointer(pointer) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| shape(pointer, v, "an integer")),
        }
    }

    /// The object at `path` (keys from the root), created empty where missing.
    pub fn object_mut(&mut self, path: &[&str]) -> Result<&mut Map<String, Value>, SpecError> {
        let mut cur = &mut self.json;
        let mut walked = String::new();
        for key in path {
            walked.push('/');
            walked.push_str(key);
            let obj = cur.as_object_mut().ok_or_else(|| SpecError::Shape {
                field: walked.clone(),
                found: "not an object".into(),
                expected: "an object",
            })?;
            let slot = obj
                .entry(key.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if slot.is_null() {
                *slot = Value::Object(Map::new());
            }
            if !slot.is_object() {
                return Err(shape(&walked, slot, "an object"));
            }
            cur = slot;
        }
        Ok(cur.as_object_mut().expect("checked above"))
    }
}

fn shape(pointer: &str, v: &Value, expected: &'static str) -> SpecError {
    let found = match v {
        Value::String(s) => format!("the string {s:?}"),
        other => other.to_string(),
    };
    SpecError::Shape {
        field: pointer.trim_start_matches('/').replace('/', "."),
        found,
        expected,
    }
}

/// A bind mount of the spec: type `bind`, or a `bind`/`rbind` option (both forms are
/// in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub source: &'a str,
    pub destination: &'a str,
}

pub fn bind_mounts(spec: &Value) -> Vec<Bind<'_>> {
    let Some(mounts) = spec.get("mounts").and_then(Value::as_array) else {
        return Vec::new();
    };
    mounts
        .iter()
        .filter(|m| {
            m.get("type").and_then(Value::as_str) == Some("bind")
                || m.get("options")
                    .and_then(Value::as_array)
                    .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
        })
        .filter_map(|m| {
            Some(Bind {
                source: m.get("source")?.as_str()?,
                destination: m.get("destination").and_then(Value::as_str).unwrap_or("?"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(json: Value) -> Spec {
        Spec {
            path: PathBuf::from("/b/config.json"),
            json,
        }
    }

    #[test]
    fn env_lookup_last_wins() {
        let s = spec(json!({"process": {"env": ["A=1", "B=x=y", "A=2", "BROKEN"]}}));
        assert_eq!(s.env("A"), Some("2"));
        assert_eq!(s.env("B"), Some("x=y"));
        assert_eq!(s.env("C"), None);
        assert_eq!(spec(json!({})).env("A"), None);
    }

    #[test]
    fn set_env_replaces_once_and_is_idempotent() {
        let mut s = spec(json!({"process": {"env": ["A=1", "X=0,1", "B=2", "X=3"]}}));
        assert!(s.set_env("X", "GPU-a").unwrap());
        assert_eq!(s.json["process"]["env"], json!(["A=1", "X=GPU-a", "B=2"]));
        assert!(!s.set_env("X", "GPU-a").unwrap());
        let mut s = spec(json!({"process": {}}));
        assert!(s.set_env("X", "1").unwrap());
        assert_eq!(s.json["process"]["env"], json!(["X=1"]));
        let mut s = spec(json!({"process": {"env": "A=1"}}));
        assert!(s.set_env("X", "1").is_err());
    }

    #[test]
    fn upsert_replaces_by_id_and_push_unique_appends_once() {
        let mut s = spec(json!({"mounts": [{"destination": "/a", "source": "x"}]}));
        let a = json!({"destination": "/a", "source": "y"});
        assert!(s.upsert(&[], "mounts", "destination", a.clone()).unwrap());
        assert!(!s.upsert(&[], "mounts", "destination", a.clone()).unwrap());
        let b = json!({"destination": "/b"});
        assert!(s.upsert(&[], "mounts", "destination", b.clone()).unwrap());
        assert_eq!(s.json["mounts"], json!([a, b]));
        let rule = json!({"allow": true});
        assert!(s
            .push_unique(&["linux", "resources"], "devices", rule.clone())
            .unwrap());
        assert!(!s
            .push_unique(&["linux", "resources"], "devices", rule)
            .unwrap());
        assert_eq!(
            s.json["linux"]["resources"]["devices"],
            json!([{"allow": true}])
        );
    }

    #[test]
    fn user_defaults_to_root() {
        assert_eq!(
            spec(json!({"process": {"user": {"uid": 1000, "gid": 100}}})).user(),
            (1000, 100)
        );
        assert_eq!(spec(json!({"process": {}})).user(), (0, 0));
    }

    #[test]
    fn int_checks_type() {
        let s = spec(json!({"a": {"n": 5, "s": "5", "z": null}}));
        assert_eq!(s.int("/a/n").unwrap(), Some(5));
        assert_eq!(s.int("/a/z").unwrap(), None);
        assert_eq!(s.int("/a/missing").unwrap(), None);
        let err = s.int("/a/s").unwrap_err().to_string();
        assert_eq!(
            err,
            "config.json field a.s is the string \"5\", expected an integer"
        );
    }

    #[test]
    fn object_mut_creates_and_keeps() {
        let mut s = spec(json!({"linux": {"x": 1}}));
        s.object_mut(&["linux", "resources", "pids"])
            .unwrap()
            .insert("limit".into(), json!(5));
        assert_eq!(
            s.json,
            json!({"linux": {"x": 1, "resources": {"pids": {"limit": 5}}}})
        );
        let mut s = spec(json!({"linux": {"resources": 3}}));
        let err = s
            .object_mut(&["linux", "resources", "pids"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux.resources is 3, expected an object"),
            "{err}"
        );
    }

    #[test]
    fn load_save_keeps_mode_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        fs::write(&p, r#"{"z":1,"a":{"y":2,"b":3},"future":{"x":[1,2]}}"#).unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let s = Spec::load(dir.path()).unwrap();
        s.save().unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            r#"{"z":1,"a":{"y":2,"b":3},"future":{"x":[1,2]}}"#
        );
        assert_eq!(crate::fsutil::mode_of(&p, 0), 0o644);
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Spec::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read ") && err.contains("config.json"),
            "{err}"
        );
        fs::write(dir.path().join("config.json"), "{oops").unwrap();
        let err = Spec::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not valid JSON"), "{err}");
        fs::write(dir.path().join("config.json"), "[1]").unwrap();
        let err = Spec::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not a JSON object"), "{err}");
    }
}
