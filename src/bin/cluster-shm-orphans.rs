//! Lists, and with `--remove` unlinks, the shared-memory segments that
//! clusters whose processes are all gone left in /dev/shm (a SIGKILLed
//! run, a crash): the segments libcluster named whose head process no
//! longer runs. Live clusters' segments and other programs' are never
//! touched.
//!
//!     cluster-shm-orphans [--prefix P] [--remove]
//!     (from the source tree: cargo run --release --bin cluster-shm-orphans -- ...)
//!
//! Exit status: 0, or 1 when /dev/shm cannot be read or a segment cannot
//! be removed.

use cluster::service::shm;

fn main() {
    let mut prefix: Option<String> = None;
    let mut remove = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--remove" => remove = true,
            "--prefix" => prefix = args.next(),
            "-h" | "--help" => {
                println!("usage: cluster-shm-orphans [--prefix P] [--remove]");
                return;
            }
            o => {
                eprintln!("cluster-shm-orphans: unknown argument {o:?} (see --help)");
                std::process::exit(2);
            }
        }
    }
    let found = match shm::orphans(prefix.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cluster-shm-orphans: {e}");
            std::process::exit(1);
        }
    };
    for s in &found {
        let size = std::fs::metadata(format!("{}/{}", cluster::sys::shm::SHM_DIR, s.os_name)).map(|m| m.len()).unwrap_or(0);
        println!("{}\t{size} bytes\thead pid {} (gone)\tcreator pid {}\tprefix {:?}\tname {}", s.os_name, s.stamp.head_pid, s.creator_pid, s.prefix, s.name);
    }
    if remove {
        match shm::remove_orphans(prefix.as_deref()) {
            Ok(gone) => eprintln!("cluster-shm-orphans: removed {} segment(s)", gone.len()),
            Err(e) => {
                eprintln!("cluster-shm-orphans: {e}");
                std::process::exit(1);
            }
        }
    } else if !found.is_empty() {
        eprintln!("cluster-shm-orphans: {} orphan(s); --remove unlinks them", found.len());
    }
}
