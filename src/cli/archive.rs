//! What `datasets upload` sends: an archive file as it is, or a folder of class folders written
//! as a tar on the fly (no temporary file), with a byte count for the progress bar.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::error::CliError;

/// A body to upload and about how many bytes it is.
pub struct UploadBody {
    pub stream: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>,
    /// Exact for a file; for a folder, the files plus tar's headers (close enough for a bar).
    pub size: u64,
    /// Sent as `Content-Length` when known (a file).
    pub exact: bool,
}

/// The body for `path`: the file itself, or a folder as a tar stream.
pub async fn body_of(path: &Path) -> Result<UploadBody, CliError> {
    let meta = tokio::fs::metadata(path).await.map_err(|e| CliError::file(path, e))?;
    if meta.is_file() {
        let file = tokio::fs::File::open(path).await.map_err(|e| CliError::file(path, e))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 16);
        return Ok(UploadBody { stream: Box::pin(stream), size: meta.len(), exact: true });
    }
    let (files, bytes) = count_files(path).map_err(|e| CliError::file(path, e))?;
    if files == 0 {
        return Err(CliError::Usage(format!("{}: no files in this folder", path.display())));
    }
    // A 512-byte header per file (and per folder, roughly), padding to 512, two zero blocks.
    let size = bytes + files * 1024 + 1024;
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let root = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter { sender: sender.clone(), buffer: Vec::with_capacity(1 << 16) };
        if let Err(error) = write_tar(&root, writer) {
            // The stream ends with the error: the upload is cut short and the server refuses it.
            let _ = sender.blocking_send(Err(error));
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
    Ok(UploadBody { stream: Box::pin(stream.fuse()), size, exact: false })
}

/// Each top-level entry of `root` under its own name (class folders at the archive's top).
fn write_tar(root: &Path, writer: ChannelWriter) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(writer);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(root)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        let name = entry.file_name().map(PathBuf::from).unwrap_or_default();
        if entry.is_dir() {
            builder.append_dir_all(&name, &entry)?;
        } else {
            builder.append_path_with_name(&entry, &name)?;
        }
    }
    builder.into_inner()?.flush()
}

/// Files under `dir` and their total size.
fn count_files(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = std::fs::metadata(entry.path())?;
        if meta.is_dir() {
            let (f, b) = count_files(&entry.path())?;
            files += f + 1;
            bytes += b;
        } else {
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}

/// A writer that hands 64 KiB chunks to the upload (from a blocking thread).
struct ChannelWriter {
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(1 << 16)));
        self.sender.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::other("the upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= 1 << 16 {
            self.send_buffer()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_becomes_a_tar_of_its_class_folders() {
        let dir = tempfile::tempdir().unwrap();
        for (class, name) in [("cats", "a.jpg"), ("dogs", "b.jpg")] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            std::fs::write(dir.path().join(class).join(name), vec![7u8; 70_000]).unwrap();
        }
        let body = body_of(dir.path()).await.unwrap();
        assert!(!body.exact);
        let chunks: Vec<Bytes> = body.stream.map(|c| c.unwrap()).collect().await;
        let tar_bytes: Vec<u8> = chunks.concat();
        assert!(tar_bytes.len() as u64 <= body.size, "{} > {}", tar_bytes.len(), body.size);
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        names.sort();
        assert_eq!(names, ["cats/", "cats/a.jpg", "dogs/", "dogs/b.jpg"]);
    }
}
