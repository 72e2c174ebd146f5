//! What the fuzz targets share: a configuration with a pool of its own.

use std::sync::OnceLock;

use fileupload::Config;

/// A configuration whose pool is a temporary directory, made once per
/// fuzzing process; bodies are limited to 1 MiB, progress is off, and so
/// is fsync (durability is not what is fuzzed, and syncs would slow every
/// run to the disk's pace).
pub fn config() -> &'static Config {
    static CONFIG: OnceLock<(tempfile::TempDir, Config)> = OnceLock::new();
    let (_, config) = CONFIG.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            directory: dir.path().to_owned(),
            directory_is_default: false,
            max_size: Some(1 << 20),
            progress_interval: None,
            fsync: false,
            ..Config::default()
        };
        (dir, config)
    });
    config
}
