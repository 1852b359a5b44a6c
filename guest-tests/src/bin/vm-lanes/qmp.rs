//! A minimal QMP client: enough for `screendump`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::Error;

/// A connected QMP session (capabilities negotiated).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to QEMU's QMP socket and leaves capability negotiation mode.
    pub fn connect(path: &Path) -> Result<Self, Error> {
        let stream = UnixStream::connect(path).map_err(|e| Error::io(path, e))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| Error::io(path, e))?;
        let writer = stream.try_clone().map_err(|e| Error::io(path, e))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(Error::Lane(format!("unexpected QMP greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", serde_json::json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<serde_json::Value, Error> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| Error::Lane(format!("QMP read: {e}")))?;
        if n == 0 {
            return Err(Error::Lane("QMP socket closed".into()));
        }
        serde_json::from_str(&line).map_err(|e| Error::Lane(format!("QMP sent bad JSON: {e}")))
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        let request = serde_json::json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{request}").map_err(|e| Error::Lane(format!("QMP write: {e}")))?;
        loop {
            let msg = self.read_message()?;
            if msg.get("event").is_some() {
                continue;
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            return Err(Error::Lane(format!("QMP {command} failed: {msg}")));
        }
    }

    /// Writes the current display to `file` as PNG.
    pub fn screendump_png(&mut self, file: &Path) -> Result<(), Error> {
        self.execute(
            "screendump",
            serde_json::json!({"filename": file.display().to_string(), "format": "png"}),
        )
        .map(drop)
    }
}
