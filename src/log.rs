//! Logging: quiet by default. `LIBCLUSTER_LOG=error|warn|info|debug`
//! sets the level; a sink can take records instead of stderr. When the
//! host forbids calls on library threads, records are held until the host
//! drains them on its own thread.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    pub fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Off,
            1 => Level::Error,
            2 => Level::Warn,
            3 => Level::Info,
            _ => Level::Debug,
        }
    }
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "off" | "none" | "0" => Level::Off,
            "error" | "1" => Level::Error,
            "warn" | "warning" | "2" => Level::Warn,
            "info" | "3" => Level::Info,
            "debug" | "trace" | "4" => Level::Debug,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

pub type Sink = Arc<dyn Fn(Level, &str) + Send + Sync>;

const HELD_MAX: usize = 1024;

pub struct Logger {
    level: AtomicU8,
    sink: Mutex<Option<Sink>>,
    hold: AtomicBool,
    held: Mutex<VecDeque<(Level, String)>>,
    /// Prefix naming this process, e.g. "worker 3".
    who: Mutex<String>,
}

impl Logger {
    pub fn new(level: Level) -> Logger {
        Logger {
            level: AtomicU8::new(level as u8),
            sink: Mutex::new(None),
            hold: AtomicBool::new(false),
            held: Mutex::new(VecDeque::new()),
            who: Mutex::new(String::from("process")),
        }
    }

    /// The level from `LIBCLUSTER_LOG`, else `Off`.
    pub fn level_from_env() -> Level {
        std::env::var("LIBCLUSTER_LOG").ok().and_then(|v| Level::parse(&v)).unwrap_or(Level::Off)
    }

    pub fn set_level(&self, level: Level) {
        self.level.store(level as u8, Ordering::Relaxed);
    }
    pub fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Relaxed))
    }
    pub fn set_sink(&self, sink: Option<Sink>) {
        *self.sink.lock() = sink;
    }
    /// Holds records for `drain_held` instead of delivering them at once.
    pub fn set_hold(&self, hold: bool) {
        self.hold.store(hold, Ordering::Relaxed);
    }
    pub fn set_who(&self, who: String) {
        *self.who.lock() = who;
    }

    pub fn enabled(&self, level: Level) -> bool {
        level != Level::Off && level <= self.level()
    }

    pub fn log(&self, level: Level, msg: &str) {
        if !self.enabled(level) {
            return;
        }
        let sink = self.sink.lock().clone();
        match sink {
            Some(_) if self.hold.load(Ordering::Relaxed) => {
                let mut q = self.held.lock();
                if q.len() == HELD_MAX {
                    q.pop_front();
                }
                q.push_back((level, msg.to_string()));
            }
            Some(s) => s(level, msg),
            None => eprintln!("libcluster[{}] {}: {}", self.who.lock(), level.name(), msg),
        }
    }

    /// Delivers held records to the sink on the calling thread.
    pub fn drain_held(&self) {
        let records: Vec<_> = self.held.lock().drain(..).collect();
        if records.is_empty() {
            return;
        }
        if let Some(s) = self.sink.lock().clone() {
            for (l, m) in records {
                s(l, &m);
            }
        }
    }

    pub fn error(&self, msg: impl AsRef<str>) {
        self.log(Level::Error, msg.as_ref())
    }
    pub fn warn(&self, msg: impl AsRef<str>) {
        self.log(Level::Warn, msg.as_ref())
    }
    pub fn info(&self, msg: impl AsRef<str>) {
        self.log(Level::Info, msg.as_ref())
    }
    pub fn debug(&self, msg: impl AsRef<str>) {
        if self.enabled(Level::Debug) {
            self.log(Level::Debug, msg.as_ref())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_filter_and_sink_receives() {
        let l = Logger::new(Level::Warn);
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        l.set_sink(Some(Arc::new(move |lv, m: &str| g.lock().push((lv, m.to_string())))));
        l.info("hidden");
        l.error("shown");
        assert_eq!(&*got.lock(), &[(Level::Error, "shown".to_string())]);
    }

    #[test]
    fn held_records_wait_for_drain() {
        let l = Logger::new(Level::Debug);
        let got = Arc::new(Mutex::new(0));
        let g = got.clone();
        l.set_sink(Some(Arc::new(move |_, _: &str| *g.lock() += 1)));
        l.set_hold(true);
        l.warn("a");
        l.warn("b");
        assert_eq!(*got.lock(), 0);
        l.drain_held();
        assert_eq!(*got.lock(), 2);
    }

    #[test]
    fn parse_names() {
        assert_eq!(Level::parse("DEBUG"), Some(Level::Debug));
        assert_eq!(Level::parse("nope"), None);
    }
}
