//! Embeds `migrations/NNNN_name.up.sql` + `NNNN_name.down.sql` into the binary, checking at build
//! time that every migration has both halves and that versions are unique.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn main() -> Result<(), String> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?;
    let dir = Path::new(&manifest).join("../../migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut found: BTreeMap<u32, (String, Option<PathBuf>, Option<PathBuf>)> = BTreeMap::new();
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| format!("{}: not a UTF-8 file name", path.display()))?
            .to_string();
        if !file.ends_with(".sql") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let (stem, up) = if let Some(s) = file.strip_suffix(".up.sql") {
            (s, true)
        } else if let Some(s) = file.strip_suffix(".down.sql") {
            (s, false)
        } else {
            return Err(format!(
                "{file}: migration files end in .up.sql or .down.sql"
            ));
        };
        let (num, name) = stem
            .split_once('_')
            .ok_or_else(|| format!("{file}: expected NNNN_name.up.sql"))?;
        let version: u32 = num
            .parse()
            .map_err(|_| format!("{file}: `{num}` is not a version number"))?;
        let slot = found
            .entry(version)
            .or_insert_with(|| (name.to_string(), None, None));
        if slot.0 != name {
            return Err(format!(
                "{file}: version {version} is used by both `{}` and `{name}`",
                slot.0
            ));
        }
        let canonical = std::fs::canonicalize(&path).map_err(|e| e.to_string())?;
        if up {
            slot.1 = Some(canonical);
        } else {
            slot.2 = Some(canonical);
        }
    }
    let mut code = String::from("&[\n");
    for (version, (name, up, down)) in &found {
        let up = up
            .as_ref()
            .ok_or_else(|| format!("migration {version:04}_{name} has no .up.sql"))?;
        let down = down.as_ref().ok_or_else(|| {
            format!("migration {version:04}_{name} has no .down.sql (down migrations are required)")
        })?;
        code.push_str(&format!(
            "    EmbeddedMigration {{ version: {version}, name: {name:?}, up: include_str!({up:?}), down: include_str!({down:?}) }},\n"
        ));
    }
    code.push_str("]\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    std::fs::write(out.join("migrations.rs"), code).map_err(|e| e.to_string())
}
