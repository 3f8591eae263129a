//! A fresh ext4 file system mounted over a loop device for the length of
//! the run, made like the root file system of the machines this bench runs
//! on: ext4 *without* a journal. On that root, creating files right after a
//! large delete costs milliseconds (see `fsprobe.rs`), so figures taken
//! there depend on what ran before; a run-private file system of the same
//! kind has no such history. (With a journal, each fsync is a journal
//! commit written through the loop device to the backing file: on these
//! VMs that measured 5.3 ms submit→terminal and 317 tasks/s, a figure of
//! the loop device more than of the runtime.)

use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of the (sparse) image: room for the output scenario's 5 × 256 MiB.
const IMAGE_BYTES: u64 = 4 << 30;

pub struct LoopFs {
    image: PathBuf,
    pub mount: PathBuf,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl LoopFs {
    /// Creates `dir/fs.img`, formats and mounts it on `dir/fs`. Needs root
    /// and `mkfs.ext4`.
    pub fn create(dir: &Path) -> Result<LoopFs, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root (mounting needs CAP_SYS_ADMIN)".into());
        }
        let image = dir.join("fs.img");
        let mount = dir.join("fs");
        let f = std::fs::File::create(&image).map_err(|e| format!("{}: {e}", image.display()))?;
        f.set_len(IMAGE_BYTES)
            .map_err(|e| format!("sizing {}: {e}", image.display()))?;
        drop(f);
        // No journal, like the root; inode tables initialized now, not by
        // a background kernel thread while the scenarios run.
        let formatted = run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal", "-E", "lazy_itable_init=0"])
            .arg(&image));
        let mounted = formatted.and_then(|()| {
            std::fs::create_dir_all(&mount).map_err(|e| format!("{}: {e}", mount.display()))?;
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount))
        });
        if let Err(e) = mounted {
            let _ = std::fs::remove_file(&image);
            return Err(e);
        }
        Ok(LoopFs { image, mount })
    }

    /// What `findmnt` says of it, for the header.
    pub fn describe(&self) -> String {
        let out = Command::new("findmnt")
            .args(["-no", "SOURCE,FSTYPE,OPTIONS"])
            .arg(&self.mount)
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            _ => "?".into(),
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("umount").arg(&self.mount)) {
            eprintln!("unmounting the bench file system: {e}");
            return;
        }
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}
