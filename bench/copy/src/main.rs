//! Copies every file under /in to the same path under /out, streaming in 1 MiB blocks; a
//! record shard (no files, its bytes on stdin) is copied from stdin to stdout: the identity map.

use std::io::{Read, Write};
use std::path::Path;

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            total += copy_tree(&entry.path(), &target)?;
        } else {
            let mut input = std::fs::File::open(entry.path())?;
            let mut output = std::fs::File::create(&target)?;
            let mut block = vec![0u8; 1 << 20];
            loop {
                let n = input.read(&mut block)?;
                if n == 0 {
                    break;
                }
                output.write_all(&block[..n])?;
                total += n as u64;
            }
        }
    }
    Ok(total)
}

fn copy_stdin() -> std::io::Result<u64> {
    std::io::copy(&mut std::io::stdin().lock(), &mut std::io::stdout().lock())
}

fn main() {
    let copied = match std::fs::read_dir("/in").map(|mut entries| entries.next().is_none()) {
        Ok(true) => copy_stdin(),
        _ => copy_tree(Path::new("/in"), Path::new("/out")),
    };
    if let Err(e) = copied {
        eprintln!("copy: {e}");
        std::process::exit(1);
    }
}
