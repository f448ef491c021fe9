//! Real photos for the benches, read from `../shared/data/cats_and_dogs_filtered`.

use std::io::Write;
use std::path::Path;

/// A zip (stored) of the first `per_class` training photos of each class, as class folders.
pub fn photos_zip(per_class: usize) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cats_and_dogs_filtered/train");
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for class in ["cats", "dogs"] {
        let mut names: Vec<_> =
            std::fs::read_dir(root.join(class)).expect("shared photos").map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names.into_iter().take(per_class) {
            writer.start_file(format!("{class}/{}", name.to_string_lossy()), options).unwrap();
            writer.write_all(&std::fs::read(root.join(class).join(&name)).unwrap()).unwrap();
        }
    }
    writer.finish().unwrap().into_inner()
}
