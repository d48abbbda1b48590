//! What ficus keeps next to its config, in `.ficus/`: backfill checkpoints (`backfills/`), the
//! position when there is no store (`slots/`), gaps repaired (`gaps/`). Each file is written
//! whole and durably, so a crash leaves the old file or the new one, never half of one.

use std::path::Path;

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
