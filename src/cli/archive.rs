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
    // Walked once before sending: an unreadable file or a link to a folder is refused before a
    // byte is sent.
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

/// Each entry of `root` under its path below it (class folders at the archive's top), in name
/// order. A link to a file is sent as the file; a link to a folder is refused (it could loop).
fn write_tar(root: &Path, writer: ChannelWriter) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(writer);
    append_folder(&mut builder, root, Path::new(""))?;
    builder.into_inner()?.flush()
}

fn append_folder(builder: &mut tar::Builder<ChannelWriter>, dir: &Path, name: &Path) -> std::io::Result<()> {
    for (path, is_dir) in entries(dir)? {
        let entry_name = name.join(path.file_name().unwrap_or_default());
        if is_dir {
            builder.append_dir(&entry_name, &path)?;
            append_folder(builder, &path, &entry_name)?;
        } else {
            builder.append_path_with_name(&path, &entry_name)?;
        }
    }
    Ok(())
}

/// The entries of `dir`, sorted, each with whether it is a folder; a link to a folder is an
/// error.
fn entries(dir: &Path) -> std::io::Result<Vec<(PathBuf, bool)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let link = std::fs::symlink_metadata(&path)?.file_type().is_symlink();
        let is_dir = path.is_dir();
        if link && is_dir {
            return Err(std::io::Error::other(format!("{}: a link to a folder is not followed", path.display())));
        }
        out.push((path, is_dir));
    }
    out.sort();
    Ok(out)
}

/// Files under `dir` (and folders, counted as files for tar's headers) and their total size.
fn count_files(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for (path, is_dir) in entries(dir)? {
        if is_dir {
            let (f, b) = count_files(&path)?;
            files += f + 1;
            bytes += b;
        } else {
            files += 1;
            bytes += std::fs::metadata(&path)?.len();
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
        assert_eq!(names, ["cats", "cats/a.jpg", "dogs", "dogs/b.jpg"]);
    }

    #[tokio::test]
    async fn a_link_to_a_folder_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cats")).unwrap();
        std::fs::write(dir.path().join("cats/a.jpg"), b"x").unwrap();
        // A loop: cats/again -> the root.
        std::os::unix::fs::symlink(dir.path(), dir.path().join("cats/again")).unwrap();
        let Err(error) = body_of(dir.path()).await else { panic!("a loop must be refused") };
        assert!(error.to_string().contains("a link to a folder"), "{error}");
    }
}
