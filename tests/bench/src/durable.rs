//! A baseline that writes what the design makes durable around a launch,
//! in line, with no runtime: what the disk alone adds to a task that is
//! accepted durably and leaves a durable result.
//!
//! One run: a 4 KiB write and `fdatasync` of a file that exists already
//! (the submit's WAL commit), the task directory as the submit creates it
//! (a directory and three files), the claim (a symlink) and the result's
//! temp file with a directory `fsync`, the command itself, then the result
//! body written, `fdatasync`ed and renamed. The runtime overlaps some of
//! these with the launch; here they are in line, so the difference
//! between this baseline and the bare command is what the durable writes
//! cost on this file system, and a runtime at or below it pays nothing
//! on top of them.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Durable {
    dir: PathBuf,
    wal: File,
    runs: usize,
}

impl Durable {
    /// Under `dir` (created), on the file system the runtime's data is on.
    pub fn new(dir: PathBuf) -> std::io::Result<Durable> {
        fs::create_dir_all(&dir)?;
        let wal = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("wal"))?;
        wal.write_all_at(&[0u8; 4096], 0)?;
        wal.sync_all()?;
        Ok(Durable { dir, wal, runs: 0 })
    }

    /// The durable writes around `command`; the whole time.
    pub fn around(&mut self, command: &mut dyn FnMut() -> Duration) -> Duration {
        let t = Instant::now();
        self.steps(command)
            .unwrap_or_else(|e| panic!("the durable baseline in {}: {e}", self.dir.display()));
        t.elapsed()
    }

    fn steps(&mut self, command: &mut dyn FnMut() -> Duration) -> std::io::Result<()> {
        self.runs += 1;
        let frame = [self.runs as u8; 4096];
        self.wal.write_all_at(&frame, 4096)?;
        self.wal.sync_data()?;
        let task = self.dir.join(self.runs.to_string());
        fs::create_dir(&task)?;
        for name in ["request.json", "stdout.log", "stderr.log"] {
            File::create(task.join(name))?;
        }
        std::os::unix::fs::symlink("{\"shim_pid\":1}", task.join("shim.claim"))?;
        let mut result = File::create(task.join("result.json.tmp"))?;
        File::open(&task)?.sync_all()?;
        command();
        result.write_all(br#"{"status":"success","exit_code":0}"#)?;
        result.sync_data()?;
        fs::rename(task.join("result.json.tmp"), task.join("result.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_a_task_directory_with_its_result_and_runs_the_command() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = Durable::new(tmp.path().join("d")).unwrap();
        let mut ran = 0;
        d.around(&mut || {
            ran += 1;
            Duration::ZERO
        });
        assert_eq!(ran, 1);
        let task = tmp.path().join("d/1");
        assert!(task.join("result.json").is_file());
        assert!(!task.join("result.json.tmp").exists());
        assert!(task
            .join("shim.claim")
            .symlink_metadata()
            .unwrap()
            .is_symlink());
    }
}
