//! The workers' execution logs: one file per worker process, opened with
//! `O_APPEND`, one line per event written with a single `write` before the
//! worker reports anything, so a line survives a SIGKILL that comes after
//! it. `S` marks a handler's start, `D` its work done (written before it
//! returns the result):
//!
//! ```text
//! S <task id> <attempt> <pid> <epoch µs>
//! D <task id> <attempt> <pid> <epoch µs>
//! ```

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// What a line records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mark {
    /// The handler started.
    Start,
    /// The handler finished its work and is about to return a result.
    Done,
}

/// One line of an execution log.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub(crate) mark: Mark,
    pub(crate) task: String,
    pub(crate) attempt: u32,
    pub(crate) pid: u32,
    pub(crate) at_us: u64,
}

/// The writing end, shared by a worker's handlers.
pub(crate) struct ExecLog {
    file: Mutex<File>,
    pid: u32,
}

impl ExecLog {
    pub(crate) fn open(path: &Path) -> Result<ExecLog> {
        Ok(ExecLog {
            file: Mutex::new(crate::procs::open_append(path)?),
            pid: std::process::id(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Appends one line (one `write` call).
    pub(crate) fn write(&self, mark: Mark, task: &str, attempt: u32) -> std::io::Result<()> {
        let m = match mark {
            Mark::Start => 'S',
            Mark::Done => 'D',
        };
        let line = format!(
            "{m} {task} {attempt} {} {}\n",
            self.pid,
            crate::procs::epoch_us()
        );
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(line.as_bytes())
    }
}

/// Reads every record of the `.log` files in `dir`. A last line cut short
/// (impossible for one small `write`, but cheap to tolerate) is skipped.
pub(crate) fn read_dir(dir: &Path) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let complete = text.rsplit_once('\n').map_or("", |(head, _)| head);
        for (i, line) in complete.lines().enumerate() {
            out.push(
                parse(line)
                    .with_context(|| format!("{} line {}: {line:?}", path.display(), i + 1))?,
            );
        }
    }
    Ok(out)
}

fn parse(line: &str) -> Result<Record> {
    let f: Vec<&str> = line.split(' ').collect();
    let [m, task, attempt, pid, at] = f[..] else {
        bail!("expected 5 fields");
    };
    let mark = match m {
        "S" => Mark::Start,
        "D" => Mark::Done,
        _ => bail!("unknown mark {m:?}"),
    };
    Ok(Record {
        mark,
        task: task.to_owned(),
        attempt: attempt.parse()?,
        pid: pid.parse()?,
        at_us: at.parse()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_written_are_read_back_and_a_cut_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = ExecLog::open(&dir.path().join("w1.log")).unwrap();
        log.write(Mark::Start, "t_1", 1).unwrap();
        log.write(Mark::Done, "t_1", 1).unwrap();
        drop(log);
        let mut f = crate::procs::open_append(&dir.path().join("w1.log")).unwrap();
        f.write_all(b"S t_2 1 4").unwrap();
        std::fs::write(dir.path().join("server.txt"), "not a log").unwrap();
        let records = read_dir(dir.path()).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].mark, Mark::Start);
        assert_eq!(records[1].mark, Mark::Done);
        assert_eq!(records[1].task, "t_1");
        assert_eq!(records[1].pid, std::process::id());
        assert!(records[0].at_us <= records[1].at_us);
    }
}
