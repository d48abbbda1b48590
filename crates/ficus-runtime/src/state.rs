//! What ficus keeps next to its config, in `.ficus/`: backfill checkpoints (`backfills/`), the
//! position when there is no store (`slots/`), gaps repaired (`gaps/`). Each file is written
//! whole and durably, so a crash leaves the old file or the new one, never half of one.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::RunError;

/// Writes `bytes` to `path` durably: a temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let io = |e: std::io::Error| RunError::Config(format!("writing {}: {e}", path.display()));
    let dir = path.parent().expect("a state file has a directory");
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut f, bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Reads a state file, `None` when there is none; `hint` says what to do with one that is damaged.
pub(crate) fn load<T: DeserializeOwned>(path: &Path, hint: &str) -> Result<Option<T>, RunError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| RunError::Config(format!("{}: {e}\nhint: {hint}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RunError::Config(format!("{}: {e}", path.display()))),
    }
}

/// Reads every state file (`*.json`) of a directory; none when it does not exist.
pub(crate) fn load_all<T: DeserializeOwned>(dir: &Path, hint: &str) -> Result<Vec<T>, RunError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(RunError::Config(format!("{}: {e}", dir.display()))),
    };
    let mut all = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| RunError::Config(format!("{}: {e}", dir.display())))?
            .path();
        if path.extension().is_some_and(|e| e == "json")
            && let Some(item) = load(&path, hint)?
        {
            all.push(item);
        }
    }
    Ok(all)
}

/// Sorts by id, oldest first: ids are hex timestamps, so a shorter one is older.
pub(crate) fn oldest_first<T>(items: &mut [T], id: impl Fn(&T) -> &str) {
    items.sort_by(|a, b| (id(a).len(), id(a)).cmp(&(id(b).len(), id(b))));
}
