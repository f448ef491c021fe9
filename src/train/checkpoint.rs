//! Checkpoint files: named tensors as safetensors, written atomically (temporary name, fsync,
//! rename, fsync of the directory) and described by size and sha256.
//!
//! A weights file holds every parameter of the model, batch-norm statistics included, under
//! `<layer>.<weight>`; an optimizer file holds the optimizer's exported state.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::train::error::TrainError;
use crate::train::job::CheckpointFile;

/// File names for the checkpoint after `epoch` (1-based) of `phase` at `global_step`: unique
/// per checkpoint, so a reader of an older one never sees it replaced.
pub fn file_names(phase: usize, epoch: u32, global_step: u64) -> (String, String) {
    let stem = format!("p{phase}-e{epoch}-s{global_step}");
    (format!("weights-{stem}.safetensors"), format!("optimizer-{stem}.safetensors"))
}

/// Writes `tensors` to `dir/name` atomically.
pub fn write(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>) -> Result<CheckpointFile, TrainError> {
    write_with_metadata(dir, name, tensors, None)
}

/// Writes `tensors` to `dir/name` atomically, with safetensors header metadata (our weights
/// files record their numerics under [`crate::train::weights::CONVENTION_KEY`]).
pub fn write_with_metadata(
    dir: &Path,
    name: &str,
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<CheckpointFile, TrainError> {
    fs::create_dir_all(dir)?;
    let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), metadata)
        .map_err(|source| TrainError::CheckpointEncode { name: name.to_string(), source })?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    if let Err(error) = written.and_then(|()| fs::rename(&tmp, &path)) {
        // A full disk (or any failed write) leaves no half-written file, and frees its space.
        let _ = fs::remove_file(&tmp);
        return Err(error.into());
    }
    // The rename itself must reach the disk too; not every platform can open a directory.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(CheckpointFile { path, size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)) })
}

/// Reads a safetensors file into named CPU tensors.
pub fn load_weights(path: impl AsRef<Path>) -> Result<HashMap<String, Tensor>, TrainError> {
    let path = path.as_ref();
    let bytes = fs::read(path)?;
    candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|source| TrainError::CheckpointRead { path: path.to_path_buf(), source })
}
